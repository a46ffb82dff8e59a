"""`gap-mllm push`: publish a GAP-MLLM checkpoint folder to the Hub, with a generated model card.

    gap-mllm push --model runs/gap-mllm-det --repo org/gap-mllm --eval-summary runs/eval/det runs/eval/grounding
    gap-mllm push --model DIR --repo org/gap-mllm --dry-run      # show files and card, upload nothing

One commit holds the safetensors weights, the remote code, the processor, tokenizer and chat template
files (hub_files.plan_upload decides and checks) and README.md (model_card.build_model_card). From
Python, `push_model(model, processor, repo_id)` does the same for objects in memory; plain
`model.push_to_hub(repo)` + `processor.push_to_hub(repo)` also work but upload transformers' generic card.

Every Hub call goes through `transformers.utils.hub.hf_api()` (the client transformers itself uses),
so a test can swap in a recording fake for both routes (docs/transformers-notes.md §14). The token comes from
`hf auth login` or HF_TOKEN as usual.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd
from transformers.utils import hub as transformers_hub

from .command_arguments import add_push_arguments as add_arguments  # noqa: F401 - the command's add_arguments
from .hub_files import HubFolderError, check_repo_id, plan_upload
from .model_card import build_model_card, lineage_note

logger = logging.getLogger(__name__)


def _hub_api():
    return transformers_hub.hf_api()  # looked up at call time: tests replace it


def build_card_text(folder, repo_id, eval_summaries=(), base_model=None, untrained=False, training_data=None,
                    datasets=None) -> str:
    card = build_model_card(folder, repo_id=repo_id, eval_summaries=eval_summaries,
                            base_model=base_model or None, untrained=untrained,
                            training_data=training_data, datasets=datasets)
    return str(card)


def push_folder(folder, repo_id: str, card_text: str | None = None, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload GAP-MLLM checkpoint", api=None):
    """Upload the planned files of `folder` (+ `card_text` as README.md) in one commit.

    Returns `(commit_info, uploaded_paths)`. Raises HubFolderError before any Hub call when the repo id is not
    one the Hub accepts or the folder is not publishable."""
    check_repo_id(repo_id)
    plan = plan_upload(folder)
    api = api or _hub_api()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision:
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name))
                  for name in plan.files if not (card_text is not None and name == "README.md")]
    if card_text is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode("utf-8")))
    info = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, revision=revision)
    return info, sorted(op.path_in_repo for op in operations)


def push_model(model, processor, repo_id: str, eval_summaries=(), base_model=None, untrained=False, training_data=None,
               datasets=None, **push_kwargs):
    """Save `model` and `processor` to a temporary folder and publish it with `push_folder` (one commit,
    generated card; a model in memory records no training data, so pass `training_data`). Returns what
    `push_folder` returns."""
    with tempfile.TemporaryDirectory(prefix="gap-mllm-push-") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        card = build_card_text(tmp, repo_id, eval_summaries, base_model, untrained, training_data, datasets)
        note = lineage_note(tmp)  # a model in memory records no lineage unless its folder did (its config's sources)
        if note is not None:
            logger.warning(note.replace(Path(tmp).name, "the model", 1))
        return push_folder(tmp, repo_id, card_text=card, **push_kwargs)


def main(args: argparse.Namespace) -> int:
    folder = Path(args.model)
    try:
        check_repo_id(args.repo)  # before anything is read
        plan = plan_upload(folder)
        card = None if args.keep_readme else build_card_text(folder, args.repo, args.eval_summary, args.base_model,
                                                             args.untrained, args.training_data, args.datasets)
        note = None if args.keep_readme else lineage_note(folder)
    except (HubFolderError, FileNotFoundError, ValueError) as error:
        print(f"gap-mllm push: error: {error}", file=sys.stderr)
        return 2
    if args.keep_readme and "README.md" not in plan.files:
        print("gap-mllm push: error: --keep-readme given but the folder has no README.md", file=sys.stderr)
        return 2
    if note is not None:  # before anything is uploaded: the card's lineage and licence are not the folder's own
        print(f"gap-mllm push: note: {note}", file=sys.stderr, flush=True)
    print(f"{len(plan.files)} file(s) to upload to {args.repo}" + (f", {len(plan.skipped)} left out" if plan.skipped else ""))
    for name in plan.files:
        print(f"  + {name}")
    for name in plan.skipped:
        print(f"  - {name} (not uploaded)")
    if args.dry_run:
        if card is not None:
            print("\n--- README.md (generated) ---\n" + card)
        print("dry run: nothing uploaded")
        return 0
    info, uploaded = push_folder(folder, args.repo, card_text=card, private=args.private, revision=args.revision,
                                 commit_message=args.commit_message)
    print(f"uploaded {len(uploaded)} file(s): {getattr(info, 'commit_url', info)}")
    return 0
