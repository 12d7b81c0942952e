"""Training: the study's fine-tuning methods as thin recipes over TRL and PEFT.

full and lora/qlora are TRL SFT on (user: bare source text, assistant: `chosen`), or on chat
conversations, with the loss on the answer's tokens only; dpo is TRL DPO on (`chosen`,
`rejected`) with full weights. Rows are tokenized here, in `prompt.format` (the same text
generation encodes), and handed to TRL as ids. Every method shares the study's schedule; only the
learning rate varies across the grid.

The modules, one concern each, in the order the train stage (stages/train.py) meets them:

- `settings`: `train.*` and `methods.METHOD.*` checked into a `TrainSettings`, before any loading;
- `launch`: the `accelerate launch` command for `train.num_processes` > 1;
- `examples`: the training file read, its examples tokenized into TRL's rows, truncation counted;
- `model`: the model loaded per method (dtype, 4-bit, LoRA config), compiled or graphed;
- `trainer`: TRL's SFTTrainer or DPOTrainer built from them;
- `checkpoints`: the steps checkpoints fall on, the callback that writes them, keep_checkpoints;
- `run`: `train_cell`, one cell end to end, and its `TrainResult`.

This file imports none of them: an importer names the module that holds what it uses.
torch, transformers, TRL, PEFT, datasets and accelerate are imported inside the functions that
use them. Together they take ~19 s to import on this project's 2-core machine (torch 3 s,
transformers and datasets 14 s, TRL and PEFT 2 s; measured under load), and the train stage,
which imports every module here at its top, reports a bad param, or hands over to `accelerate
launch`, before it needs any of them.
"""
