class PreviewText:
    def __init__(self, value: str, **kwargs) -> None:
        self.values = [value]

    def as_dict(self) -> dict:
        return {"text": self.values}


class PreviewImage:
    """Saves the (B, H, W, 3) images as PNGs in the temp folder, like ComfyUI's."""

    def __init__(self, image, animated: bool = False, cls=None, **kwargs) -> None:
        import os
        import uuid

        import folder_paths
        import numpy as np
        from PIL import Image

        folder = folder_paths.get_temp_directory()
        os.makedirs(folder, exist_ok=True)
        self.values = []
        for array in (image.clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8).numpy():
            name = f"preview_{uuid.uuid4().hex[:8]}.png"
            Image.fromarray(np.asarray(array)).save(os.path.join(folder, name))
            self.values.append({"filename": name, "subfolder": "", "type": "temp"})
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}
