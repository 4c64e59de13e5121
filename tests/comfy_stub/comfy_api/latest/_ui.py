class PreviewText:
    def __init__(self, value: str, **kwargs) -> None:
        self.values = [value]

    def as_dict(self) -> dict:
        return {"text": self.values}
