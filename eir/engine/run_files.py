"""The names of a run folder's files, one place for every module that reads or writes them
(core module: no imports)."""

LOCK_FILE = "run.lock"
TASK_FILE = "task.json"
CONFIG_RECORD = "run_config.json"
DATA_RECORD = "run_data.json"
DONE_FILE = "DONE"
METRICS_FILE = "metrics.json"
TRAINING_LOG = "training_log.json"
#: A step's last checkpoint: its weights, which the next step starts from and evaluation reads.
FINAL_CHECKPOINT = "model_final.pth"
#: A step's prepass maps (the old model's pseudo-labels of its training images).
PREPASS_FILE = "prepass.npz"
#: The file that says a step's bank folder is complete.
BANK_MANIFEST = "bank/manifest.json"
