"""Per-step schedule: epochs converted to iterations from the step's dataset size and batch."""

schedule = dict(
    epochs=60,  # epochs of step 0
    incremental_epochs=60,  # epochs of every later step
    lr=1e-3,  # base learning rate of step 0
    incremental_lr=1e-4,  # base learning rate of later steps
    poly_power=0.9,  # poly decay per iteration: lr * (1 - iter / max_iter) ** power
    warmup_fraction=0.0,  # linear warm-up over this fraction of each step (ADE20K: 0.2)
    max_iter=None,  # a fixed number of iterations per step instead of epochs (quick tests)
)
