"""The one typed config schema (house rule 3).

Every field is documented where it is declared; defaults live here; study files (YAML) hold only
overrides and may `extends:` another study. Unknown keys and bad values fail with a `ConfigError`
that names the file and key and says why. `algo` is typed too: the algorithm's own options dataclass
(`Vimpo`, `Grpo`, ...: `config.algo.beta`), built from its mapping (`name` plus options) and checked against
the algorithm registry; `to_dict` writes it back as that mapping, the form study files and MLflow hold.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vimpo_bench import algorithms, ranges
from vimpo_bench.algorithms.fixed_points import vimpo_config_problem
from vimpo_bench.config import lora
from vimpo_bench.config.bounded_yaml import MAX_YAML_BYTES, BoundedLoader, YamlRefused
from vimpo_bench.ranges import Range, clip, num, short  # noqa: F401 - the schema's field helpers, re-exported

STUDIES_DIR = Path(__file__).parent.parent / "studies"
DEFAULT_STUDY = "tiny_demo"


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the file and key."""


def check_ranges(obj: Any, where: str) -> None:
    """Every number of a dataclass instance finite and within its field's declared `Range` (`ranges.num`; None
    skips an optional field left unset). Raises ConfigError naming `where`.key and the allowed range."""
    ranges.check_ranges(obj, where, ConfigError)
    for f in dataclasses.fields(obj):  # a nested section (model.lora)
        if dataclasses.is_dataclass(value := getattr(obj, f.name)):
            check_ranges(value, f"{where}.{f.name}")


# ---------------------------------------------------------------------------------------- schema


@dataclass
class LoraConfig:
    r: int = num(0, ge=0)
    """LoRA rank (0 = off: full fine-tuning). With r > 0 only peft adapters train; pi_ref is the base model
    (vimpo_bench/models/lora.py says what changes: reference, checkpoints, optimizer)."""
    alpha: float = num(16.0, gt=0)
    """LoRA alpha: the adapter's update is (alpha / r) B A."""
    dropout: float = num(0.0, ge=0, lt=1)
    """Must be 0: dropout is off in every RL forward (`models.disable_dropout`), so PPO's first ratio is 1."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: all-linear (every linear layer but the output head) or module names, as a
    list or comma-separated (e.g. q_proj,v_proj)."""


@dataclass
class ModelConfig:
    name: str = "tiny-arith"
    """`tiny-arith` (built-in, warm-started on the arith task), a local folder, or a Hugging Face id."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    cache_dir: str | None = None
    """Where the built-in model is cached (default: $VIMPO_BENCH_CACHE or ~/.cache/vimpo-bench)."""
    warm_start_steps: int = num(600, ge=0)
    """Most supervised warm-start steps of tiny-arith; it stops earlier at 45% held-out greedy (cache key)."""
    warm_start_lr: float = num(1e-3, gt=0)
    """Warm-start learning rate of tiny-arith."""
    warm_start_batch_size: int = num(64, ge=1)
    """Warm-start batch size of tiny-arith."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters through peft, `model.lora.r` > 0 (default: off, full fine-tuning)."""


@dataclass
class TaskConfig:
    name: str = "arith"
    """Training task: arith (built-in) or math_train (the MATH training set)."""
    options: dict = field(default_factory=dict)
    """Task options, e.g. arith {digits, terms, operators} or {data_dir} for the math sets."""
    template: str = "none"
    """Prompt template: none (the task's raw prompt), qwen-boxed, r1 or plain."""


@dataclass
class RolloutConfig:
    backend: str = "hf"
    """hf (transformers, anywhere) | vllm (GPU)."""
    prompts_per_step: int = num(16, ge=1)
    """Prompts sampled per RL step."""
    group_size: int = num(8, ge=2, why="every algorithm here needs at least 2 responses per prompt")
    """Responses sampled per prompt (G)."""
    max_new_tokens: int = num(28, ge=1)
    """Response length limit; responses without EOS by then are truncated."""
    temperature: float = num(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = num(1.0, gt=0, le=1)
    """Nucleus sampling threshold (1 = off)."""
    refill_rounds: int = num(0, ge=0)
    """DAPO's dynamic sampling: groups whose trained rewards are all equal (no signal for a group baseline) are
    replaced by groups of freshly drawn prompts, over at most this many more rollouts (0 = off). Groups still
    constant when the rounds run out stay in the batch, so a step always trains on prompts_per_step groups."""


@dataclass
class OptimConfig:
    steps: int = num(80, ge=0)
    """RL steps (each: rollout, scoring, log-probs, advantages, PPO update)."""
    lr: float = num(1e-4, gt=0)
    """Peak learning rate (AdamW)."""
    lr_schedule: str = "constant"
    """constant | linear | cosine decay to 0 over training, after warmup."""
    warmup_steps: int = num(0, ge=0)
    """Optimizer steps of linear warmup."""
    weight_decay: float = num(0.0, ge=0)
    """AdamW weight decay."""
    epochs: int = num(1, ge=1)
    """PPO epochs over each batch."""
    minibatches: int = num(2, ge=1)
    """Minibatches (optimizer steps) per epoch; whole groups go to one minibatch."""
    grad_accum: int = num(1, ge=1)
    """Microbatches per minibatch whose gradients are accumulated (bounds memory)."""
    max_grad_norm: float = num(1.0, gt=0, why="a negative clip threshold flips the gradient")
    """Gradient clipping threshold."""
    logprob_microbatch: int | None = num(None, ge=1)
    """Rows per forward pass when computing old and reference log-probs (None = all)."""


@dataclass
class RewardConfig:
    noise: str = "none"
    """none | symmetric (flip with probability p) | asymmetric (false positive fp, false negative fn)."""
    p: float = num(0.0, ge=0, le=1)
    """Flip probability of the symmetric noise model."""
    fp: float = num(0.0, ge=0, le=1)
    """Probability that a wrong answer is rewarded (asymmetric)."""
    fn: float = num(0.0, ge=0, le=1)
    """Probability that a right answer is denied (asymmetric)."""
    truncated: str = "zero_reward"
    """Rule for responses cut at max_new_tokens, the same for every algorithm, applied before the noise:
    zero_reward (terminal with R = 0) | mask (left out of the losses and group baselines) | soft_overlong
    (DAPO's soft overlong punishment: the verdict is kept and a length penalty is added to every response,
    0 up to max_new_tokens - overlong_buffer, falling linearly to -1 at max_new_tokens; never noised)."""
    overlong_buffer: int = num(4, ge=1)
    """soft_overlong: the last N tokens before max_new_tokens over which the penalty falls from 0 to -1
    (DAPO's L_cache)."""


@dataclass
class RefConfig:
    schedule: str = "frozen"
    """frozen | hard (pi_ref <- pi_theta every N steps) | ema (pi_ref <- alpha pi_theta + (1-alpha) pi_ref)."""
    every: int = num(10, ge=1)
    """N: steps between reference updates (hard, ema)."""
    alpha: float = num(0.1, gt=0, le=1)
    """EMA weight of the policy (ema)."""


@dataclass
class BetaScheduleConfig:
    kind: str = "constant"
    """constant | linear | cosine: anneal beta from algo.beta to `final` over training."""
    final: float | None = num(None, ge=0)
    """Final beta of linear / cosine (required for them)."""


@dataclass
class HeldoutEvalConfig:
    every: int = num(20, ge=0)
    """Held-out evaluation every N steps (0 = only at start and end)."""
    problems: int = num(200, ge=1)
    """Held-out problems per evaluation."""
    samples: int = num(4, ge=1)
    """Samples per problem for sampled accuracy (at the rollout temperature)."""
    greedy: bool = True
    """Also measure greedy accuracy."""
    completions_logged: int = num(32, ge=0)
    """Completions saved as an artifact at each evaluation."""
    suites: str = ""
    """Benchmark suites also evaluated in training (`eval --suite` names, comma list; '' = none): the first
    `problems` test problems, `samples` each, at the rollout's temperature and length limit: bench/<suite>/*."""
    suites_every: int = num(0, ge=0)
    """Steps between those suite evaluations, a multiple of `every` (0 = only at the start and the end)."""


@dataclass
class RunConfig:
    seed: int = num(0, ge=0, lt=2**32)
    """Seed of everything: prompts, sampling, noise, initialization."""
    experiment: str = "vimpo-bench"
    """MLflow experiment."""
    run_name: str | None = None
    """MLflow run name (default: algo-seed-hash)."""
    output_dir: str = "runs"
    """Checkpoints go to <output_dir>/<run id>/checkpoint."""
    checkpoint_every: int = num(20, ge=0)
    """Steps between checkpoints (0 = only at the end)."""
    log_checkpoint: bool = False
    """Log the final model as an MLflow artifact `checkpoint/`."""
    threads: int | None = num(None, ge=1)
    """torch intra-op threads (None = torch's default)."""
    engine: str = "native"
    """Training engine: native (the readable reference loop, CPU or one GPU; hf rollouts) | trl (our
    algorithms inside TRL's GRPOTrainer: accelerate, DeepSpeed/FSDP, vLLM rollouts)."""


SECTIONS = {
    "model": ModelConfig,
    "task": TaskConfig,
    "rollout": RolloutConfig,
    "optim": OptimConfig,
    "reward": RewardConfig,
    "ref": RefConfig,
    "beta_schedule": BetaScheduleConfig,
    "eval": HeldoutEvalConfig,
    "run": RunConfig,
}
# Keys a study file may carry that training itself does not read (studies and sweeps read them).
STUDY_KEYS = ("study", "extends")
# Keys added to the schema after results were recorded, with the default they were added with (which
# reproduces the behaviour from before they existed): left out of `Config.hash()` while they hold it, so
# that a study cell finished before the key existed is still found as done. Add each new key here.
LATER_KEYS = {"run.engine": "native", "rollout.refill_rounds": 0, "reward.overlong_buffer": 4, "eval.suites": "",
              "eval.suites_every": 0, "model.lora": dataclasses.asdict(LoraConfig())}
# Dotted config keys that never change a result (names, output places, thread counts, how much is saved):
# left out of `Config.hash()`, and never an arm or a condition in a report.
BOOKKEEPING_KEYS = (
    "run.experiment", "run.run_name", "run.output_dir", "run.log_checkpoint", "run.threads", "run.checkpoint_every",
    "model.cache_dir", "eval.completions_logged",
)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    algo: Any = field(default_factory=lambda: {"name": "vimpo"})
    """The algorithm's typed options (its dataclass, `algorithms.get(name, ...)`), built from `name` plus options
    (docs/algorithms.md); missing options take its defaults, in code as from a study file."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    beta_schedule: BetaScheduleConfig = field(default_factory=BetaScheduleConfig)
    eval: HeldoutEvalConfig = field(default_factory=HeldoutEvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # The algorithm's defaults, whether the Config comes from a file or is built in code: a missing
        # `beta` must not silently become 0 (GRPO would lose its KL term, VIMPO would refuse to start).
        if type(self.algo) not in algorithms.REGISTRY.values():
            self.algo = _algo_section(self.algo, "config")

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain data; `algo` as its mapping, `name` first (what the hash and MLflow hold)."""
        d = dataclasses.asdict(self)
        d["algo"] = {"name": self.algo_name, **d["algo"]}
        return d

    def hash(self) -> str:
        """Short stable hash of everything that changes the result (not names or output places)."""
        d = self.to_dict()
        for dotted in BOOKKEEPING_KEYS:
            drop_key(d, dotted)
        for dotted in sorted(LATER_KEYS, key=lambda k: -k.count(".")):  # a nested key before its section
            drop_key(d, dotted, LATER_KEYS[dotted])
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def algo_name(self) -> str:
        return algorithms.name_of(self.algo)

    def make_algorithm(self, beta: float | None = None):
        """The algorithm's typed options, with `beta` in place of the configured one when given (range-checked)."""
        return self.algo if beta is None else dataclasses.replace(self.algo, beta=beta)


def drop_key(d: dict, dotted: str, *only_if: Any) -> None:
    """Remove `a.b.key` from nested dict `d` (with `only_if`, only while the key holds that value)."""
    *parents, key = dotted.split(".")
    for part in parents:
        d = d.get(part, {})
    if key in d and (not only_if or d[key] == only_if[0]):
        del d[key]


# ---------------------------------------------------------------------------------------- loading

def load_yaml(text: str, where: str) -> Any:
    """YAML from user input (study files, --set values) with the bounded loader; ConfigError on a bomb, too
    deep a nesting or a syntax error, in one line."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass (bounded_yaml)
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        lines = str(exc).strip().splitlines()
        raise ConfigError(f"{where}: not valid YAML: {clip(lines[0] if lines else '')}") from None


def study_path(study: str | Path) -> Path:
    """A study file by path, or by name from the packaged studies."""
    path = Path(study)
    if path.is_file():
        return path
    packaged = STUDIES_DIR / f"{study}.yaml"
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
    raise ConfigError(f"study file not found: {study} (packaged studies: {known})")


def read_study(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged overrides of a study file and the files it `extends:` (later files win)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a study file is at most {MAX_YAML_BYTES}")
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file must be a mapping of sections")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / parent) if (path.parent / str(parent)).is_file() else study_path(str(parent))
    return deep_merge(read_study(parent_path, _seen + (path,)), data)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "algo":
            out[key] = deep_merge(out[key], value)
        elif key == "algo" and isinstance(value, dict) and isinstance(out.get(key), dict):
            # a different algorithm drops the options of the one it replaces
            same = value.get("name", out[key].get("name")) == out[key].get("name")
            out[key] = {**out[key], **value} if same else dict(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {short(item)}: expected key=value, e.g. algo.beta=0.1")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=BoundedLoader) if raw.strip() else ""  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise ConfigError(f"--set {short(item)}: YAML nested too deeply") from None
    except YamlRefused as exc:
        raise ConfigError(f"--set {short(item)}: {exc}") from None
    except yaml.YAMLError:  # not YAML: the text itself
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, item: str) -> None:
    path, value = parse_override(item)
    set_key(data, path, value, f"--set {short(item)}")


def set_key(data: dict, path: list[str], value: Any, where: str) -> None:
    """data[path[0]][path[1]]... = value (sections created as needed); switching `algo.name` drops the
    previous algorithm's options. Checking the key itself is left to `from_dict`."""
    if isinstance(data.get("algo"), str):
        data["algo"] = {"name": data["algo"]}
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a section")
    if path[0] == "algo" and path[-1] == "name" and data.get("algo", {}).get("name") not in (None, value):
        data["algo"] = {}  # switching algorithm: the old one's options do not carry over
        node = data["algo"]
    node[path[-1]] = value


def load_config(
    study: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> Config:
    """Resolve a config: defaults <- study file (or `data`) <- `--set` overrides. Validated."""
    source = "--set" if overrides else "defaults"
    raw: dict[str, Any] = {}
    if data is not None:
        raw, source = copy.deepcopy(data), "config"
    elif study is not None:
        path = study_path(study)
        raw, source = read_study(path), str(path)
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw, source)


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    raw = {k: v for k, v in raw.items() if k not in STUDY_KEYS}
    config = Config()
    for key, value in raw.items():
        if key == "algo":
            config.algo = _algo_section(value, source)
            continue
        if key not in SECTIONS:
            valid = ", ".join(["algo", *SECTIONS, *STUDY_KEYS])
            raise ConfigError(f"{source}: unknown key {short(key)}; valid top-level keys: {valid}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {short(key)} must be a mapping, got {short(value)}")
        setattr(config, key, _section(SECTIONS[key], value, f"{source}: {key}"))
    validate(config, source)
    return config


def _algo_section(value: Any, source: str):
    """The algorithm's options object from the `algo` mapping (or a bare name), every option coerced and checked."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: algo must be a mapping with a name, got {short(value)}")
    name = value.get("name", "vimpo")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: algo.name: expected a string, got {short(name)}")
    try:
        defaults = algorithms.options(name)
    except ValueError as exc:
        raise ConfigError(f"{source}: algo.name: {exc}") from None
    resolved = {"name": name}
    for key, default in defaults.items():
        resolved[key] = value.get(key, default)
    unknown = sorted(set(value) - set(defaults) - {"name"}, key=str)
    if "truncated" in unknown:
        raise ConfigError(f"{source}: algo.truncated is now reward.truncated: one truncation rule for every algorithm")
    if unknown:
        raise ConfigError(f"{source}: unknown algo option(s) {clip(', '.join(map(str, unknown)))} for {short(name)}; valid: {', '.join(defaults)}")
    for key, default in defaults.items():
        expected = type(default) if default is not None else None
        hint = _algo_type(name, key, expected)
        try:
            resolved[key] = coerce(resolved[key], hint, f"{source}: algo.{key}")
        except ConfigError:
            rng = ranges.declared_range(algorithms.REGISTRY[name], key)
            if rng is None:
                raise
            raise ConfigError(f"{source}: algo.{key}: {_expected_number(hint)} {rng}{f' ({rng.why})' if rng.why else ''}, "
                              f"got {short(resolved[key])}") from None
    try:
        return algorithms.get(resolved.pop("name"), **resolved)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None  # the message names the key: algo.<option>


def _expected_number(hint: Any) -> str:
    """'expected an integer' / 'expected a number' for a numeric option's type hint (`int | None` too)."""
    return "expected an integer" if int in (hint, *typing.get_args(hint)) else "expected a number"


def _algo_type(name: str, key: str, fallback):
    cls = algorithms.REGISTRY[name]
    hints = typing.get_type_hints(cls)
    return hints.get(key, fallback or Any)


def _section(cls, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {clip(', '.join(map(str, unknown)))}; valid: {', '.join(names)}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert: int -> float) a value against a field's type hint."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:  # the message of the branch the value's type fits first (a list's)
                kind = typing.get_origin(arg) or arg
                errors.append((isinstance(kind, type) and isinstance(value, kind), str(exc)))
        raise ConfigError(max(errors, key=lambda e: e[0])[1] if errors else f"{where}: bad value {short(value)}")
    if dataclasses.is_dataclass(hint):  # a nested section (model.lora)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        return _section(hint, value, where)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        return [coerce(v, (typing.get_args(hint) or (Any,))[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {short(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {short(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {short(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {short(value)}")
    return value


def _one_of(value: Any, valid: tuple, where: str) -> None:
    if value not in valid:
        raise ConfigError(f"{where}: {short(value)} is not one of {', '.join(map(str, valid))}")


def validate(c: Config, source: str) -> None:
    """Every number against the range declared beside its field (finite, in range), then the choices and
    cross-field checks; each message names the key and says why."""
    for name in SECTIONS:
        check_ranges(getattr(c, name), f"{source}: {name}")
    _one_of(c.model.dtype, ("float32", "bfloat16", "float16"), f"{source}: model.dtype")
    if problem := lora.config_problem(c):
        raise ConfigError(f"{source}: {problem}")
    _one_of(c.task.template, ("none", "qwen-boxed", "r1", "plain"), f"{source}: task.template")
    _one_of(c.rollout.backend, ("hf", "vllm"), f"{source}: rollout.backend")
    _one_of(c.optim.lr_schedule, ("constant", "linear", "cosine"), f"{source}: optim.lr_schedule")
    if c.optim.minibatches * c.optim.grad_accum > c.rollout.prompts_per_step:
        raise ConfigError(
            f"{source}: optim.minibatches x optim.grad_accum ({c.optim.minibatches * c.optim.grad_accum}) exceeds "
            f"rollout.prompts_per_step ({c.rollout.prompts_per_step}): each piece needs at least one whole group")
    if c.eval.suites_every and (not c.eval.every or c.eval.suites_every % c.eval.every):
        raise ConfigError(f"{source}: eval.suites_every ({c.eval.suites_every}) must be a multiple of eval.every "
                          f"({c.eval.every}): suites are evaluated beside the validation split")
    _one_of(c.reward.noise, ("none", "symmetric", "asymmetric"), f"{source}: reward.noise")
    _one_of(c.reward.truncated, ("zero_reward", "mask", "soft_overlong"), f"{source}: reward.truncated")
    if c.reward.truncated == "soft_overlong" and c.reward.overlong_buffer > c.rollout.max_new_tokens:
        raise ConfigError(f"{source}: reward.overlong_buffer ({c.reward.overlong_buffer}) exceeds "
                          f"rollout.max_new_tokens ({c.rollout.max_new_tokens}): the penalty would start before "
                          "the first token")
    _one_of(c.ref.schedule, ("frozen", "hard", "ema"), f"{source}: ref.schedule")
    _one_of(c.beta_schedule.kind, ("constant", "linear", "cosine"), f"{source}: beta_schedule.kind")
    if c.beta_schedule.kind != "constant":
        if c.beta_schedule.final is None:
            raise ConfigError(f"{source}: beta_schedule.final is required for a {c.beta_schedule.kind} schedule")
        if c.algo_name == "vimpo" and c.beta_schedule.final <= 0:
            raise ConfigError(f"{source}: beta_schedule.final: VIMPO needs beta > 0, got {c.beta_schedule.final}")
    if c.algo_name == "vimpo":  # a loss with no fixed point is refused; one off beta is warned about
        error, warning = vimpo_config_problem(c.algo, c.beta_schedule.kind, c.beta_schedule.final,
                                              c.rollout.max_new_tokens)
        if error:
            raise ConfigError(f"{source}: {error}")
        if warning:
            warnings.warn(f"{source}: {warning}", stacklevel=2)

