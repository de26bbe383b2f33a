"""Upload a finished run folder to the Hugging Face Hub: the adapter (or model), tokenizer and model card.

Called after a run with ``hub_model_id`` set, or by ``sparselora push RUN REPO_ID``. The upload happens only
once the run folder is complete, so a failed upload (offline, no token, no rights) leaves it as it was.
"""

from __future__ import annotations

from pathlib import Path

from sparselora.run_folder.layout import read_run

# What a model repo needs; checkpoints, logs and status files stay local.
UPLOADED = [
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer*",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.yaml",
    "metrics.json",
]


class HubUploadError(OSError):
    """The Hub did not take the upload; the run folder is complete and unchanged."""


def push_run(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``run_dir`` to the model repo ``repo_id`` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    read_run(run_dir)  # only finished runs go up
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=run_dir,
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=UPLOADED,
            commit_message=f"sparselora run {run_dir.name}",
        )
    except Exception as err:  # offline, no token, no rights, a bad id: the Hub's errors have no common base
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubUploadError(
            f"could not upload '{run_dir}' to the Hub repo '{repo_id}' ({type(err).__name__}: {reason}). The run "
            f"folder is complete and unchanged; upload it later with `sparselora push {run_dir} {repo_id}` where "
            "the Hub is reachable, logged in (`hf auth login`) or with HF_TOKEN set."
        ) from err
    return str(commit.commit_url)
