"""Readers and writers of the model layouts DeepGen is published in, beside our converted layout (`loading.py`).

- `safe_pickle`: torch `.pt` / `.pth` files, mmengine training checkpoints included, read without running code.
- `diffusers_layout`: the authors' `DeepGen-1.0-diffusers` folder (read and written).
"""
