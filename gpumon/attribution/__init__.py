"""Who is on each GPU: processes read from /proc, owners from the kubelet and from Slurm's job
mapping, joined into what the attribution sources export (docs/attribution.md)."""
