"""Review labels as a gold file `prefpipe eval-annotator --gold` reads unchanged (format auto).

One row per labelled pair, its reviewers' consensus (`pipeline.review.agreement.consensus`; skips
aside). A preference is a `prompt`/`chosen`/`rejected` row (the prompt as its message list, so a
multi-turn prompt stays one; the gold reader draws the A/B order); a tie is an Auto-J row (`prompt`,
`response 1`, `response 2`, `label: 2`), whose prompt is text: a multi-turn prompt is written as its
turns, each after its role. Other fields (`pair_id`, `source`, `stratum`, `reviewers`, `published`)
become the gold pair's metadata; `source` is its category, so eval-annotator reports per source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.publish.store import read_manifest
from pipeline.review.agreement import consensus
from pipeline.review.audit import labels_by_reviewer
from pipeline.review.sample import load_pairs, stratify

ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def _text(messages: list[dict] | None) -> str:
    return "".join(m.get("content") or "" for m in messages or [])


def prompt_text(prompt: list[dict]) -> str:
    """A prompt as one text: a single user turn as it is, else `Role: content` turns."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


def gold_rows(version_dir: Path, root: Path, dataset: str, version: str,
              reviewer: str | None = None) -> list[dict]:
    strata = {s.pair_id: s for s in stratify(version_dir, read_manifest(version_dir))}
    labels, _, _ = labels_by_reviewer(root, dataset, version, set(strata), reviewer)
    per_pair: dict[str, dict[str, str]] = {}
    for who, by_pair in labels.items():
        for pair_id, preferred in by_pair.items():
            per_pair.setdefault(pair_id, {})[who] = preferred
    pairs = load_pairs(version_dir, sorted(per_pair))
    rows = []
    for pair_id in sorted(per_pair):
        p, votes = pairs[pair_id], per_pair[pair_id]
        human = consensus(list(votes.values()))
        chosen, rejected = _text(p["chosen"]), _text(p["rejected"])
        meta = {"pair_id": pair_id, "source": p["source"], "stratum": strata[pair_id].stratum,
                "reviewers": votes, "published": f"{dataset}@{version}"}
        prompt = [{"role": m["role"], "content": m["content"]} for m in p["prompt"]]
        if human == "tie":
            rows.append({"prompt": prompt_text(prompt), "response 1": chosen, "response 2": rejected,
                         "label": 2, **meta})
        else:
            better, worse = (chosen, rejected) if human == "chosen" else (rejected, chosen)
            rows.append({"prompt": prompt, "chosen": better, "rejected": worse, **meta})
    return rows


def export_gold(version_dir: Path, root: Path, dataset: str, version: str, out: Path,
                reviewer: str | None = None) -> dict:
    """Write the gold JSONL to `out` (atomically: a temporary file, then a rename); counts."""
    rows = gold_rows(version_dir, root, dataset, version, reviewer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    ties = sum("label" in r for r in rows)
    return {"path": str(out), "pairs": len(rows), "preferences": len(rows) - ties, "ties": ties}
