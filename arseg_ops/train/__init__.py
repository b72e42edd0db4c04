"""arseg_ops.train: training and evaluation of AR-Seg on labelled videos (tools layer; nothing in the core or
models imports it). Modules: manifest (CSV/JSONL rows, CamVid scanner), data (pairs + motion cache), augment,
metrics (mIoU), loop (`arseg train`), evaluate (`arseg eval`), synthetic (`arseg synthetic`), png. The commands are in arseg_ops/cli/train_commands.py."""
