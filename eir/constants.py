"""Values the whole project shares: the label that is never counted, and the normalisation
of the ImageNet-pretrained backbone (core module: no imports)."""

#: Label value of pixels that no loss and no metric counts (VOC's void border, padding).
IGNORE_LABEL = 255

#: ImageNet normalisation, RGB in pixel units: the model subtracts the mean and divides by the
#: std; the mean is also the colour of "nothing" (padding, replay canvases).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: How a new step's classifier starts: "random" (normal, std 0.01) or "aux" (every row a copy
#: of the background classifier) (:meth:`eir.modeling.head.IncrementalHead.init_classifier`).
NEW_HEAD_INITS = ("random", "aux")
