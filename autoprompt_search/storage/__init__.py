"""What is written to disk: run checkpoints, peft adapters, parquet tables, atomic directory swaps, cache paths."""
