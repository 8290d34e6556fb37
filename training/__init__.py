"""Fine-tuning Kronos on the user's own minute bars (finetune.py): data windows, losses, the training loop with
early stopping and resume, DistributedDataParallel, the training card and the A/B backtest verdict."""
