"""training: AR pretraining and SDAR conversion (CPT, SFT) with accelerate, writing HF-format checkpoints.

recipe.py (the typed recipe) -> data.py (read, tokenize, pack) -> objective.py (Eq. 3 / Eq. 7 and their masks)
-> train.py (the accelerate loop, checkpoints, resume); model_init.py builds or converts the model;
throughput.py measures training speed; build_embedded.py trains the demo models in stages.
"""
