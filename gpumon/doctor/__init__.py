"""`gpumon doctor`: the article's first three diagnosis layers (hardware, driver, workload) as
checks over one poll, each with a verdict, its evidence and a next step (docs/doctor.md)."""
