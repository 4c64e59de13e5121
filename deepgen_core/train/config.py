"""Training configuration: one dataclass per stage over shared sections (reference notes §5).

Every field carries a help string and a sensible default; `__post_init__` validates combinations and says why.
Recipes (`train/recipes/*.yaml`) only set fields; `load_config` reads a recipe plus `key.sub=value` overrides.
Nothing here reads the environment. The stage configs differ only in their defaults (§5.2/§5.3).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import DeepGenInputError
from .config_checks import check_section


def text_layer_lora_targets(layers: range) -> str:
    """Regex of embed_tokens and the attention/MLP linears of the given text layers."""
    numbers = "|".join(str(i) for i in layers)
    return rf".*language_model\.(embed_tokens|layers\.({numbers})\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj)))"

DATA_FORMATS = ("caption_json", "blip3o", "edit", "tar")
TASKS = ("text2image", "image2image")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; recipes write learning rates that way, so accept it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _yaml(text: str, source: str = "") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DeepGenInputError(f"{source or 'YAML'} is not valid YAML{where}: {problem}; fix the syntax (indentation, quotes, colons).") from None


@dataclass
class ModelConfig:
    source: str = field(default="tiny", metadata={"help": "'tiny' (embedded toy model), 'base' (fresh bridge on `vlm` + `diffusion`), a converted DeepGen folder, or a reference checkpoint (needs `vlm` + `diffusion`)"})
    vlm: str | None = field(default=None, metadata={"help": "Qwen2.5-VL-3B-Instruct folder (for 'base' and reference checkpoints)"})
    diffusion: str | None = field(default=None, metadata={"help": "UniPic2-SD3.5M-Kontext folder with transformer/ vae/ scheduler/"})
    deepgen_config: str | None = field(default=None, metadata={"help": "DeepGen config JSON (reference checkpoints; default: beside the checkpoint or inferred)"})
    init_checkpoint: str | None = field(default=None, metadata={"help": "weights to import before training: a stage-1/2 reference checkpoint (.pt/.safetensors, LoRA included) or our export"})
    tiny_seed: int = field(default=0, metadata={"help": "seed of the random weights of source='tiny'"})
    attn_implementation: str | None = field(default=None, metadata={"help": "VLM/connector attention backend (default: flash-attn on GPU when installed, else sdpa)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations of the DiT and VLM layers in backward (less memory, ~30% slower)"})
    compile: bool | str = field(default=False, metadata={"help": "torch.compile for training: false, or 'regional': each DiT block, the parts of each VLM decoder layer (attention with the LoRA, MLP, norms) and the connector layers, dynamic shapes (modeling.compile_for_training). The first step compiles (minutes at real size); the steps then run fewer, fused kernels, equal to eager within float rounding. Combines with gradient_checkpointing, the VLM LoRA, DDP and DeepSpeed ZeRO-1/2; not with ZeRO-3, whose per-module parameter gathering breaks every compiled region"})
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend of `compile`: 'inductor' (generated kernels); 'aot_eager' traces the same graphs and runs them with eager kernels (tests, debugging)"})
    cuda_graphs: bool = field(default=False, metadata={"help": "replay the DiT call and the VLM language model + SCB of every training micro-batch as CUDA graphs, forward and backward (train.graphs): the GPU no longer waits for Python to issue ~10k kernels a step (H100, stage 2, micro-batch 4 at 512^2, compiled: 0.42 -> 0.20 s a step with bf16 autocast, 0.52 -> 0.17 s with bf16 weights). One process on one GPU, no DeepSpeed, no gradient checkpointing; bf16 autocast then runs without its weight-cast cache. Each new input shape (prompt length, image size, batch) captures once (1-2 s; its activations and gradient buffers stay allocated), up to 4 shapes per region; padded prompts, edits with references and further shapes run plain. With compile, the VLM attention and the connector stay eager (their graph breaks cannot be captured)"})

    def __post_init__(self) -> None:
        if self.compile not in (False, "regional"):
            raise DeepGenInputError(f"model.compile must be false or 'regional', got {self.compile!r}.")


@dataclass
class LoraSettings:
    enabled: bool = field(default=False, metadata={"help": "attach a peft LoRA to the VLM (stage 2)"})
    rank: int = field(default=64, metadata={"help": "LoRA rank r (reference: 64)"})
    alpha: float = field(default=128.0, metadata={"help": "LoRA alpha (reference: 128, scale 2)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (reference main repo: 0.05)"})
    target_modules: str = field(default="auto", metadata={"help": "regex (full match) of VLM module names, or 'auto': embed_tokens and the linears of the text layers whose output reaches the SCB (gradients flow only there: the vision tower runs without grad, and layers after the deepest stacked hidden state feed nothing, §1.3/§1.8)"})


@dataclass
class SourceConfig:
    path: str = field(metadata={"help": "index file (.json/.jsonl) or, for format 'tar', a shard file, folder or glob"})
    format: str = field(default="blip3o", metadata={"help": f"one of {DATA_FORMATS}: caption_json (OpenUni data.json + per-image annotation), blip3o ({{txt, image_path}}), edit ({{input_image[], output_image, instruction}}), tar shards"})
    image_root: str | None = field(default=None, metadata={"help": "folder the relative image paths start from (default: the index file's folder)"})
    task: str | None = field(default=None, metadata={"help": "text2image or image2image; implied by the format except for tar"})
    weight: float = field(default=1.0, metadata={"help": "sampling weight among the sources of the same task"})
    caption_key: str = field(default="caption", metadata={"help": "caption field of caption_json annotations (e.g. 'prompt', 'caption_internlm2_short')"})
    name: str | None = field(default=None, metadata={"help": "name used in logs (default: the file name)"})

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise DeepGenInputError(f"data source {self.path!r}: format {self.format!r} is unknown; use one of {DATA_FORMATS}.")
        implied = {"caption_json": "text2image", "blip3o": "text2image", "edit": "image2image"}.get(self.format)
        if self.task is None:
            if implied is None:
                raise DeepGenInputError(f"data source {self.path!r}: tar shards need `task: text2image` or `task: image2image`.")
            self.task = implied
        if self.task not in TASKS or (implied and self.task != implied):
            raise DeepGenInputError(f"data source {self.path!r}: task {self.task!r} does not fit format {self.format!r}.")
        if self.weight <= 0:
            raise DeepGenInputError(f"data source {self.path!r}: weight must be > 0, got {self.weight}.")
        self.name = self.name or Path(self.path).name


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list, metadata={"help": "data sources; each micro-batch comes from one source"})
    task_cycle: tuple[int, int] = field(default=(1, 3), metadata={"help": "micro-batches per cycle as (image2image, text2image); reference: (1, 3) pre-train, (1, 2) SFT"})
    resize: str = field(default="fix_pixels", metadata={"help": "resize policy of training images: fix_pixels (area ~ image_size^2, sides ceil to 32), dynamic, none"})
    image_size: int = field(default=512, metadata={"help": "resize size (reference: 512)"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "text-to-image captions replaced by '' with this probability (reference: 0.1)"})
    edit_prompt_dropout: float = field(default=0.0, metadata={"help": "edit instructions replaced by '' with this probability, the references kept (reference: 0, it drops only text-to-image captions). Non-zero trains the 'input image, no instruction' branch that classifier-free guidance of an edit subtracts with an empty negative prompt"})
    max_references: int | None = field(default=None, metadata={"help": "edit references used per sample: None = all (multi-reference), 1 = the reference code's behaviour (§9.6)"})
    min_side: int = field(default=80, metadata={"help": "reject images with a side <= this (reference: 80)"})
    max_aspect: float = field(default=10.0, metadata={"help": "reject images with aspect outside (1/max, max) (reference: 10)"})
    max_retries: int = field(default=16, metadata={"help": "bad or missing samples are replaced by the next sample of the same source up to this many times"})
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers per process"})
    cache_latents: bool = field(default=False, metadata={"help": "encode every image once (frozen VAE posterior + vision tokens) and keep it on the device; same losses, no per-step decoding or encoding; for small images or sets (train.latent_cache)"})

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        self.task_cycle = tuple(self.task_cycle)
        if len(self.task_cycle) != 2 or min(self.task_cycle) < 0 or sum(self.task_cycle) == 0:
            raise DeepGenInputError(f"data.task_cycle must be two counts (image2image, text2image), not both 0; got {self.task_cycle}.")
        for name in ("prompt_dropout", "edit_prompt_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise DeepGenInputError(f"data.{name} must be in [0, 1), got {getattr(self, name)}.")


@dataclass
class OptimConfig:
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (reference: 1e-4 pre-train, 5e-5 SFT)"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay, applied only to parameters with ndim >= 2 (biases and norms get 0)"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 disables)"})
    warmup_steps: int = field(default=500, metadata={"help": "linear warm-up from warmup_start_factor * lr, in optimizer steps"})
    warmup_start_factor: float = field(default=1e-5, metadata={"help": "lr factor at step 0 (reference LinearLR start 1e-5)"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine floor as a fraction of lr (reference: 0)"})

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)


@dataclass
class DistributedConfig:
    deepspeed_config: str | None = field(default=None, metadata={"help": "DeepSpeed JSON (e.g. train/accelerate/zero2.json); None = plain DDP or one process, as launched"})
    mixed_precision: str = field(default="bf16", metadata={"help": "'bf16' or 'no' (fp32)"})
    process_group_backend: str | None = field(default=None, metadata={"help": "torch.distributed backend; default nccl on GPU, gloo on CPU"})
    cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present"})
    timeout_minutes: float = field(default=30.0, metadata={"help": "longest wait of a collective (all-reduce, gather) before it fails: how long the other ranks wait when one rank dies or hangs (gloo fails at once when a peer process dies)"})

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        if not self.timeout_minutes > 0:
            raise DeepGenInputError(f"distributed.timeout_minutes must be > 0, got {self.timeout_minutes!r} (default 30).")


@dataclass
class CheckpointConfig:
    output_dir: str = field(default="runs/deepgen", metadata={"help": "run folder: checkpoints/, tensorboard/, samples/, metrics.jsonl, exports"})
    save_every: int = field(default=1000, metadata={"help": "save a resumable checkpoint every N optimizer steps (0: only at the end)"})
    save_at_end: bool = field(default=True, metadata={"help": "save a resumable checkpoint after the last step"})
    keep_last: int = field(default=5, metadata={"help": "keep the N newest checkpoints (reference: 5)"})
    resume: str = field(default="auto", metadata={"help": "'auto' (latest complete checkpoint in output_dir, if any), 'never', or a checkpoint folder"})
    export_at_end: bool = field(default=True, metadata={"help": "at the end, write export/ (converted layout, LoRA merged) and export-reference/deepgen_checkpoint.safetensors (reference layout, LoRA as separate keys)"})


@dataclass
class LoggingConfig:
    log_every: int = field(default=10, metadata={"help": "average and log metrics every N optimizer steps"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars under output_dir/tensorboard"})
    progress_bar: bool = field(default=True, metadata={"help": "tqdm progress bar on the main process"})
    sample_every: int = field(default=0, metadata={"help": "render sample images every N steps (0: never)"})
    sample_prompts: list[str] = field(default_factory=lambda: ["a red fox sitting in the snow, photograph"], metadata={"help": "prompts for sample images"})
    sample_steps: int = field(default=28, metadata={"help": "denoising steps for sample images"})
    sample_size: int = field(default=512, metadata={"help": "side of sample images"})


@dataclass
class TrainConfig:
    """Shared fields of stages 1 and 2; `PretrainConfig` / `SFTConfig` set the reference defaults."""

    stage: str = field(default="pretrain", metadata={"help": "'pretrain' (stage 1: bridge only) or 'sft' (stage 2: + DiT + VLM LoRA)"})
    seed: int = field(default=0, metadata={"help": "seed of everything random (noise, timesteps, dropout, data order); the same on all ranks"})
    micro_batch_size: int = field(default=4, metadata={"help": "samples per micro-batch per process (reference: 4)"})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimizer step (reference: 4 pre-train, 3 SFT)"})
    max_steps: int = field(default=50_000, metadata={"help": "optimizer steps (reference 200k / 400k iterations of micro-batches = 50k / 133k steps)"})
    max_minutes: float = field(default=0.0, metadata={"help": "wall-clock budget of the training loop in minutes (0: none): past it the run ends at the next step as if max_steps were reached (checkpoint, export), e.g. for time-limited jobs; a re-run resumes from that checkpoint and goes on to max_steps. The learning-rate schedule still follows max_steps"})
    train_transformer: bool = field(default=False, metadata={"help": "train the whole DiT (stage 2; in stage 1 only for a DiT trained from scratch, as DeepGen-Tiny's recipe does)"})
    train_vlm_text: bool = field(default=False, metadata={"help": "stage 1 only: also train the VLM's text model in full, for a VLM without language pretraining (DeepGen-Tiny); the reference keeps it frozen"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model to train"})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "VLM LoRA"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and schedule"})
    distributed: DistributedConfig = field(default_factory=DistributedConfig, metadata={"help": "accelerate / DeepSpeed"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "checkpoints and export"})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"help": "logging"})

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, name))
        if self.stage not in STAGE_DEFAULTS:
            raise DeepGenInputError(f"stage must be one of {sorted(STAGE_DEFAULTS)}, got {self.stage!r}.")
        if self.micro_batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise DeepGenInputError("micro_batch_size, grad_accum and max_steps must be >= 1.")
        if self.max_minutes < 0:
            raise DeepGenInputError(f"max_minutes must be >= 0 (0: no time budget), got {self.max_minutes}.")
        if self.stage == "pretrain" and self.lora.enabled:
            raise DeepGenInputError("stage 'pretrain' does not train the VLM: set lora.enabled: false, or use stage 'sft'.")
        if self.train_vlm_text and self.stage != "pretrain":
            raise DeepGenInputError("train_vlm_text is for stage 1 of a VLM without pretraining; stage 'sft' adapts the VLM with lora.")
        if self.optim.warmup_steps >= self.max_steps:
            raise DeepGenInputError(f"optim.warmup_steps ({self.optim.warmup_steps}) must be below max_steps ({self.max_steps}).")
        if self.distributed.mixed_precision not in ("bf16", "no"):
            raise DeepGenInputError(f"distributed.mixed_precision must be 'bf16' or 'no', got {self.distributed.mixed_precision!r}.")
        if self.model.cuda_graphs and (self.model.gradient_checkpointing or self.distributed.deepspeed_config):
            raise DeepGenInputError(
                "model.cuda_graphs cannot be combined with " + ("model.gradient_checkpointing (a checkpointed region recomputes "
                "its forward inside backward, which a captured graph cannot)" if self.model.gradient_checkpointing else
                f"DeepSpeed ({self.distributed.deepspeed_config}: its hooks gather and reduce outside the captured graphs)")
                + ": set model.cuda_graphs: false, or drop the other option.")
        if self.model.compile and deepspeed_zero_stage(self.distributed.deepspeed_config) == 3:
            raise DeepGenInputError(
                f"model.compile cannot be combined with DeepSpeed ZeRO-3 ({self.distributed.deepspeed_config}): ZeRO-3 gathers "
                "each module's parameters in a hook that torch.compile must not trace, which breaks every compiled region. "
                "Use ZeRO-2 (train/accelerate/zero2.json) or plain DDP, or set model.compile: false.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)


_SECTIONS = {"model": ModelConfig, "lora": LoraSettings, "data": DataConfig, "optim": OptimConfig,
             "distributed": DistributedConfig, "checkpoint": CheckpointConfig, "logging": LoggingConfig}

# Reference notes §5.2-§5.3, in optimizer steps (mmengine counted micro-batch iterations).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"grad_accum": 4, "max_steps": 50_000, "train_transformer": False, "lora": {"enabled": False},
                 "optim": {"lr": 1e-4, "warmup_steps": 500}, "data": {"task_cycle": (1, 3)}},
    "sft": {"grad_accum": 3, "max_steps": 133_334, "train_transformer": True, "lora": {"enabled": True},
            "optim": {"lr": 5e-5, "warmup_steps": 1_334}, "data": {"task_cycle": (1, 2)}},
}


def deepspeed_zero_stage(path: str | None) -> int | None:
    """The ZeRO stage a DeepSpeed JSON asks for (0 when it has no `zero_optimization`); None without a readable file
    (the accelerator setup reports a missing one)."""
    if not path or not Path(path).is_file():
        return None
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DeepGenInputError(f"DeepSpeed config {path!r} is not valid JSON: {exc}") from exc
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DeepGenInputError(f"unknown config keys {unknown} in {where}; valid keys: {sorted(known)}.")
    check_section(cls, data, "" if where.startswith("the ") else where)
    try:
        return cls(**data)
    except TypeError as exc:
        raise DeepGenInputError(f"config section {where}: {exc}") from exc


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-5", "data.sources=[...]"]` -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise DeepGenInputError(f"override {item!r} must look like key.sub=value (e.g. optim.lr=1e-5).")
        key, value = item.split("=", 1)
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _yaml(value, f"override {item!r}")
    return tree


def build_config(stage: str, data: dict[str, Any] | None = None) -> TrainConfig:
    """Stage defaults, then `data` (a recipe dict, possibly with overrides merged in) on top."""
    data = dict(data or {})
    if data.get("stage", stage) != stage:
        raise DeepGenInputError(f"the recipe is for stage {data['stage']!r} but `deepgen train {stage}` was run.")
    if stage not in STAGE_DEFAULTS:
        raise DeepGenInputError(f"stage must be one of {sorted(STAGE_DEFAULTS)}, got {stage!r}.")
    merged = _deep_merge(STAGE_DEFAULTS[stage], data)
    merged["stage"] = stage
    return _from_dict(TrainConfig, merged, "the recipe")


def read_recipe(recipe: str | Path | None, overrides: list[str] = (), shipped: str = "train/recipes/") -> dict[str, Any]:
    """A YAML recipe as a dict (empty without one) with `key.sub=value` overrides merged on top; `shipped`
    names the shipped recipes in the error for a missing file. Shared by every `deepgen train` command."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise DeepGenInputError(f"recipe {str(path)!r} does not exist; see {shipped} for the shipped ones.")
        data = _yaml(path.read_text(), f"recipe {str(path)!r}") or {}
        if not isinstance(data, dict):
            raise DeepGenInputError(f"recipe {path} must be a YAML mapping of config fields.")
    return _deep_merge(data, parse_overrides(list(overrides)))


def load_config(stage: str, recipe: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (fields of `TrainConfig`), apply `key=value` overrides, validate."""
    return build_config(stage, read_recipe(recipe, overrides))


def field_help(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, help) for every field of a stage config (any of them), sections flattened, for
    `--help-config`."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else None
        if dataclasses.is_dataclass(default):
            out += field_help(type(default), prefix + f.name + ".")
        else:
            out.append((prefix + f.name, f.metadata.get("help", "")))
    return out
