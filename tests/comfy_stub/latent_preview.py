"""Stand-in: previews are off (ComfyUI's default `--preview-method none`), so there is no previewer."""


def get_previewer(device, latent_format):
    return None
