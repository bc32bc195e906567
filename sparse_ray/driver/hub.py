"""Pushing a run's model to the Hugging Face hub: checked before training, pushed after publishing.

``push_to_hub`` names the repository (``NAMESPACE/NAME``, or ``NAME`` for the token's own
namespace); ``auto`` (the bare ``--push_to_hub`` flag) takes the name of the output directory, as
the Hugging Face trainer does. Before any data is read the repo id is validated and a token must be
present (``HF_TOKEN`` or ``hf auth login``); nothing is asked of the network, so an offline driver
still trains. After ``run.json`` is written the published model (downloaded first from an ``s3://``
output) is uploaded with a model card holding the run's config, data and metrics. A failed push is
one line and leaves the model where it was published.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import yaml

from sparse_ray.config import Config
from sparse_ray.errors import ConfigError, UserError

#: ``push_to_hub`` values that mean "the output directory's name" (the bare flag is ``auto``).
AUTO = ("auto", "true")


def repo_id(cfg: Config) -> str | None:
    """The repository the run pushes to (None: no push)."""
    if cfg.push_to_hub is None:
        return None
    if cfg.push_to_hub.lower() in AUTO:
        return cfg.output.rstrip("/").rsplit("/", 1)[-1]
    return cfg.push_to_hub


def check(cfg: Config) -> str | None:
    """Validate the repo id and that a token is present, before training (ConfigError, one line)."""
    repo = repo_id(cfg)
    if repo is None:
        return None
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"push_to_hub: {repo!r} is no hub repo id ({reason}); pass --push-to-hub NAMESPACE/NAME"
        ) from None
    if not get_token():
        raise ConfigError("push_to_hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return repo


def push(run: dict[str, Any], repo: str) -> str:
    """Upload the run's published model with its model card; returns the repo's URL.

    Raises UserError (the model stays published) when the hub cannot be reached or refuses.
    """
    from huggingface_hub import HfApi

    output = run["output"]
    with tempfile.TemporaryDirectory(prefix="sparse-ray-push-") as tmp:
        folder = _local_model(output, os.path.join(tmp, "model"))
        with open(os.path.join(folder, "README.md"), "w") as fh:
            fh.write(model_card(run, repo))
        try:
            api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
            url = api.create_repo(repo, exist_ok=True, repo_type="model")
            steps = run.get("train", {}).get("global_step", 0)
            api.upload_folder(repo_id=url.repo_id, folder_path=folder, commit_message=f"sparse-ray: {steps} steps")
        except Exception as exc:  # offline, refused token, no rights: the model is kept either way
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"model saved at {output}/model, but pushing it to {repo} failed: {detail}") from None
    return str(url)


def _local_model(output: str, target: str) -> str:
    """A local copy of ``<output>/model`` (local or ``s3://``)."""
    from sparse_ray.data.sources import filesystem
    from sparse_ray.rundir import MODEL_DIR

    fs, root = filesystem(output)
    source = f"{root}/{MODEL_DIR}"
    if "://" not in output:
        shutil.copytree(source, target)
    else:
        fs.get(source, target, recursive=True)
    return target


def model_card(run: dict[str, Any], repo: str) -> str:
    """The README.md pushed with the model: hub metadata, usage, metrics, data and the full config."""
    cfg = run["config"]
    kind = cfg["model"]["type"]
    meta = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "feature-extraction",
        "tags": ["sentence-transformers", "sparse-encoder", kind.replace("_", "-"), "code-search", "sparse-ray"],
        "language": ["code"],
    }
    if "/" in str(cfg["model"]["base"]) and not os.path.exists(str(cfg["model"]["base"])):
        meta["base_model"] = cfg["model"]["base"]
    parts = [
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n",
        f"# {repo}\n",
        f"A {kind.replace('_', '-')} code-retrieval model (docstring → function) trained with "
        f"[sparse-ray](https://github.com/sparse-ray/sparse-ray) from `{cfg['model']['base']}` on "
        f"{', '.join(cfg['data']['languages'])}.\n",
        "## Usage\n",
        "```python\nfrom sentence_transformers import SparseEncoder\n\n"
        f'model = SparseEncoder("{repo}")\n'
        'queries = model.encode_query(["parse a yaml file"])\n'
        'documents = model.encode_document(["def load(path):\\n    return yaml.safe_load(open(path))"])\n'
        "print(model.similarity(queries, documents))\n```\n",
        _windows_note(cfg["model"]),
        _metrics_section(run),
        _training_section(run),
        "## Config\n",
        f"The resolved sparse-ray config of this run:\n\n```yaml\n{yaml.safe_dump(cfg, sort_keys=False)}```\n",
        f"Versions: `{json.dumps(run.get('versions', {}))}`\n",
    ]
    return "\n".join(parts)


def _windows_note(model: dict[str, Any]) -> str:
    """How the model reads long documents, when it reads more than its first window."""
    count = model.get("document_windows", 1)
    if count <= 1:
        return ""
    return (
        f"Documents longer than {model['max_seq_length']} tokens: the metrics below read up to {count} windows of "
        f"{model['max_seq_length']} tokens per document, later windows weighted {model['document_window_weight']:g} "
        "(`document_windows.json`), as `sparse_ray.model.load_sparse_encoder` loads it; a plain `SparseEncoder` "
        "reads the first window, as the model was trained.\n"
    )


def _metrics_section(run: dict[str, Any]) -> str:
    ev = run.get("eval") or {}
    if not ev:
        return "## Evaluation\n\nNo hold-out was evaluated in this run.\n"
    trained, untrained = ev["trained"], ev["untrained"]
    names = [k for k, v in trained.items() if isinstance(v, (int, float)) and k not in ("queries", "corpus")]
    rows = "\n".join(f"| {k} | {untrained.get(k, float('nan')):.4f} | {trained[k]:.4f} |" for k in names)
    return (
        f"## Evaluation\n\nThe run's hold-out ({trained.get('queries', 0)} queries against "
        f"{trained.get('corpus', 0)} functions, never trained on), before and after training:\n\n"
        f"| metric | untrained | trained |\n|---|---|---|\n{rows}\n"
    )


def _training_section(run: dict[str, Any]) -> str:
    train, cfg = run.get("train", {}), run["config"]
    data = "\n".join(
        f"| {lang} | {v['rows_read']} | {v['train_rows']} | {v['holdout_rows']} |"
        for lang, v in run.get("data", {}).items()
    )
    return (
        f"## Training\n\n{train.get('global_step', 0)} steps, global batch "
        f"{cfg['cluster']['workers'] * cfg['train']['batch_size']} ({cfg['cluster']['workers']} workers, "
        f"ZeRO {cfg['cluster']['zero']}), {run.get('wall_seconds', 0.0):.0f} s of wall time.\n\n"
        f"| language | rows read | trained | held out |\n|---|---|---|---|\n{data}\n"
    )
