"""training: AR pretraining and SDAR conversion (CPT, SFT) with accelerate, writing HF-format checkpoints.

recipe.py (the typed recipe) -> data.py (read, tokenize, pack) -> objective.py (Eq. 3 / Eq. 7 and their masks)
-> train.py (the accelerate loop, checkpoints, resume); model_init.py builds or converts the model;
build_embedded.py trains the demo models in stages (benchmarks/throughput.py measures training speed).

The embedded models' data and tokenizer: corpus.py rebuilds the data set from its sources, synthetic.py generates
its arithmetic and formula text, qa.py the chats drawn from the pretraining text; tokenizer.py trains the BPE
tokenizer; byte_tokenizer.py is a file-free byte-level tokenizer for smoke runs and tests.
"""
