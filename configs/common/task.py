"""The continual protocol (METHOD.md section 2) and how the datasets' label values become class ids.

The classes, their names and colours are those of ``dataloader.train.dataset`` in Detectron2's
``MetadataCatalog`` (``stuff_classes``: the name of each label value, ``stuff_colors``,
``ignore_label``); ``dataloader.test.dataset`` must name the same classes.
"""
task = dict(
    name="15-1",  # "B-I" (B classes at step 0, then steps of I) or "joint" (one step, all classes)
    setting="overlap",  # "overlap" or "disjoint"
    order=None,  # None (class-id order) or a permutation of the class ids 1..K
    # True: label value 0 is the background and 1..K the classes (VOC); False: values 0..K-1
    # are the K classes and ignore_label marks pixels of none, which become the background
    # (Detectron2's ADE20K and Cityscapes formats). Each dataset's config says which.
    background=None,
    # what a class not yet seen becomes in a test label: 0 (background) or 255 (ignored);
    # None: 0 with a background value (VOC's protocol), 255 without (ADE20K's)
    unseen_test_label=None,
)
