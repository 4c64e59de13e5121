def conditioning_set_values(conditioning, values={}, append=False):  # noqa: B006 - ComfyUI's signature
    out = []
    for sequence, extras in conditioning:
        extras = extras.copy()
        for key, value in values.items():
            if append and extras.get(key) is not None:
                value = extras[key] + value
            extras[key] = value
        out.append([sequence, extras])
    return out
