"""What each GPU did, for whom, and what it cost: GPU-seconds by state and owner integrated at the
poll rate (ledger), kept across restarts (db), counted in the daemon (service), and reported
(`gpumon report`: report, prometheus). docs/accounting.md."""
