"""Run-level settings (read by tools/train_net.py and eir.engine.runner)."""

train = dict(
    output_dir="output/eir",  # every artifact of the run goes under this folder
    init_checkpoint="",  # step 0 only: ImageNet backbone (tools/convert_torchvision_r101.py)
    # False: step 0 refuses to start unless init_checkpoint fills every backbone weight;
    # True: the backbone starts from random weights on purpose (init_checkpoint must be "").
    from_scratch=False,
    step=None,  # None: run every step; an int: run (or, with --eval-only, evaluate) that step
    eval_checkpoint="",  # --eval-only: checkpoint to evaluate (default: that step's model_final.pth)
    # --eval-only: also write the step's metrics (the summary: old / new / all / hIoU and every
    # class's IoU) to this JSON file ("": print only); an existing file is replaced
    eval_output="",
    device="auto",  # "auto" (CUDA when available), "cuda" or "cpu"
    amp=dict(enabled=True),  # mixed precision: float16 on CUDA, bfloat16 on CPU
    # GPU only, read by Detectron2's default_setup: cuDNN autotuning (pays off with fixed crops
    # and dilated convolutions; the algorithms it picks may differ between runs), and the float32
    # precision of matmuls and convolutions ("" keeps torch's defaults, in which cuDNN
    # convolutions already use TF32; "highest": no TF32; "high" / "medium": TF32 matmuls too).
    cudnn_benchmark=False,
    float32_precision="",
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=1000, max_to_keep=2),  # periodic checkpoints within a step
    log_period=20,  # iterations between log lines
    # Iterations between gathers of the loss values (a device sync and, with several processes,
    # an all_gather). Also how often a NaN or infinite loss is noticed; keep train.checkpointer.period
    # a multiple of it, so that no checkpoint is written from a diverged model unnoticed.
    gather_metric_period=1,
    seed=0,  # seeds sampling, augmentation, pasting and bank selection
    allow_config_change=False,  # True: continue a run folder whose recorded config differs
    allow_data_change=False,  # True: continue a run whose datasets' files changed since recorded
)
