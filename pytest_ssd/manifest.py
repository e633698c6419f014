"""The warmup's bill: a manifest of what a warmup compiles, its diff against a committed one, a budget.

A manifest lists, per layer config (and dtype) the session judged, every binary the configured
warmup compiled in its verdict's fresh process (:mod:`pytest_ssd.verdict`) and every autotune
key it benchmarked, with the number of configs. Built from the verdicts' warmup recordings only:
nothing runs again for it. In compile-only mode it is the same on every machine with the same
Triton and target, so it can be committed and reviewed like a snapshot; a change that adds
binaries to the warmup shows in review as a diff. Format: ``docs/manifest.md``.

Plain JSON-able dicts, no torch or triton: the xdist controller merges the workers' entries.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

FORMAT = 1
_UNCOMPARED = ("measured",)  # per entry: what varies run to run (seconds) and where it was taken
_ENTRY_FIELDS = ("layer", "config", "kernel", "warmup", "binaries", "autotune")  # what a diff reads


# ---- building ----------------------------------------------------------------------------

def _arg(event, name: str) -> str:
    """An argument's type and specialization class in the words of failure messages
    (``CompileEvent.describe``): ``*bf16 aligned``, ``i32 %16=True``, ``i32 ==1``, ``none``."""
    from .events import _SPEC_WORDS

    kind = event.signature[name]
    spec = event.specializations.get(name)
    if kind == "none" or spec in (None, "None"):
        return kind
    return f"{kind} {_SPEC_WORDS.get(spec, spec)}"


def _binary_record(event) -> dict:
    """One binary of a :class:`~pytest_ssd.events.CompileEvent`: exactly the fields of its identity
    (``options`` only where it sets any, as the identity)."""
    record = {"kernel": event.kernel, "module": event.module, "constexprs": dict(event.constexprs),
              "args": {name: _arg(event, name) for name in event.signature},
              "num_warps": event.num_warps, "num_stages": event.num_stages, "target": event.target,
              "candidate": bool(event.during_autotune)}
    if event.options:
        record["options"] = dict(event.options)
    return record


def _autotune_record(event) -> dict:
    """One autotune key of an :class:`~pytest_ssd.events.AutotuneEvent` and how many configs it benchmarked."""
    return {"kernel": event.kernel, "module": event.module, "key_values": dict(event.key_values),
            "key_dtypes": dict(event.key_dtypes), "configs": event.configs_benchmarked}


def _canon(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _sorted(records: Iterable[dict]) -> list:
    unique = {_canon(r): r for r in records}
    return [unique[k] for k in sorted(unique, key=lambda k: (unique[k]["kernel"], k))]


def layer_entry(verdict, name: str) -> dict:
    """The manifest entry of one :class:`~pytest_ssd.verdict.Verdict`'s warmup.

    ``name``: a short display name of the layer config (the report's). Everything but
    ``measured`` is compared by :func:`diff`; ``measured`` holds the seconds and where they were
    taken (they vary run to run). ``triton``: the version that compiled them (:func:`build`
    lifts it to the manifest's top).
    """
    spec, warmup = verdict.spec, verdict.warmup
    binaries = _sorted(_binary_record(e) for e in warmup.binaries().values())
    autotune = _sorted(_autotune_record(e) for e in warmup.autotune_keys().values())
    return {
        "layer": name, "triton": verdict.triton, "config": dict(sorted(spec.layer.items())), "kernel": spec.kernel,
        "warmup": spec.warmup, "binaries": binaries, "autotune": autotune, "counts": _counts(binaries, autotune),
        "measured": {"where": spec.where,
                     "warmup_seconds": round(verdict.warmup_seconds, 2),
                     "compile_seconds": round(sum((e.seconds or 0.0 for e in warmup.compiles), 0.0), 2),
                     "autotune_seconds": round(sum((e.seconds or 0.0 for e in warmup.autotunes), 0.0), 2)},
    }


def _counts(binaries: list, autotune: list) -> dict:
    return {"binaries": len(binaries), "autotune_candidates": sum(b["candidate"] for b in binaries),
            "autotune_keys": len(autotune), "configs_benchmarked": sum(a["configs"] for a in autotune)}


def _key(entry: dict) -> str:
    # The layer config alone: a session judges one kernel and warmup, and a change of either
    # is a difference of the entry ("~ warmup: ..."), next to the binaries it changed.
    return _canon(entry["config"])


def build(entries: Iterable[dict]) -> dict:
    """A manifest from :func:`layer_entry` s (of every xdist worker). Entries of one layer
    config (several tests judging it) merge: their binaries and keys united."""
    merged: dict[str, dict] = {}
    versions = set()
    for entry in entries:
        versions.add(entry.get("triton"))
        entry = {k: v for k, v in entry.items() if k != "triton"}
        key = _key(entry)
        if key not in merged:
            merged[key] = entry
            continue
        into = merged[key]
        into["binaries"] = _sorted(into["binaries"] + entry["binaries"])
        into["autotune"] = _sorted(into["autotune"] + entry["autotune"])
        into["counts"] = _counts(into["binaries"], into["autotune"])
    triton = ", ".join(sorted(str(v) for v in versions if v)) or None
    return {"format": FORMAT, "triton": triton, "layers": [merged[k] for k in sorted(merged)]}


def from_report(report) -> dict:
    """The session's manifest from a :class:`~pytest_ssd.report.SessionReport` (all workers)."""
    return build(v.warmup_manifest for wr in report.workers for v in wr.verdicts if v.warmup_manifest is not None)


# ---- reading and writing -------------------------------------------------------------------

def dumps(manifest: dict) -> str:
    """Stable, sorted, reviewable JSON: a dict or list of plain values on one line, the rest indented."""
    def scalar(v: Any) -> bool:
        return not isinstance(v, (dict, list))

    def dump(obj: Any, depth: int) -> str:
        flat = (isinstance(obj, dict) and all(map(scalar, obj.values()))) or \
               (isinstance(obj, list) and all(map(scalar, obj)))
        if scalar(obj) or flat or not obj:
            return json.dumps(obj, default=str)
        pad, inner = "  " * depth, "  " * (depth + 1)
        if isinstance(obj, list):
            return "[\n" + ",\n".join(inner + dump(v, depth + 1) for v in obj) + "\n" + pad + "]"
        return ("{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {dump(v, depth + 1)}" for k, v in obj.items())
                + "\n" + pad + "}")

    return dump(manifest, 0) + "\n"


def write(manifest: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(dumps(manifest))


def load(path: str) -> dict:
    """A committed manifest; ValueError naming the file when it is not one of this format."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("layers"), list):
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a pytest-ssd warmup manifest of format {FORMAT}, got format {got!r}")
    for i, entry in enumerate(data["layers"]):
        missing = [k for k in _ENTRY_FIELDS if k not in (entry if isinstance(entry, dict) else {})]
        if missing:
            raise ValueError(f"{path}: layers[{i}] lacks {', '.join(missing)} (expected the fields of "
                             f"docs/manifest.md)")
    return data


# ---- the diff ------------------------------------------------------------------------------

def _words(binary: dict) -> list:
    """What tells one binary of a kernel from another, as ``NAME=value`` words."""
    words = [f"{k}={v}" for k, v in binary["constexprs"].items()]
    words += [f"{k}:{v}" for k, v in binary["args"].items()]
    words += [f"num_warps={binary['num_warps']}", f"num_stages={binary['num_stages']}", f"target={binary['target']}",
              f"module={binary['module']}"]
    words += [f"{k}={v}" for k, v in binary.get("options", {}).items()]
    return words + (["autotune candidate"] if binary["candidate"] else [])


def _binary_groups(sign: str, changed: list, others: list) -> list:
    """``+ 2 binaries of `k` (HAS_Z=True, z_ptr:*fp32 aligned)``: per kernel, the words all the
    changed binaries share and none of the kernel's other binaries has; per binary where none."""
    lines = []
    for kernel in sorted({b["kernel"] for b in changed}):
        mine = [b for b in changed if b["kernel"] == kernel]
        theirs = [set(_words(b)) for b in others if b["kernel"] == kernel]
        n = len(mine)
        head = f"{sign} {n} binar{'y' if n == 1 else 'ies'} of `{kernel}`"
        if not theirs:
            lines.append(f"{head} (a kernel {'not compiled' if sign == '+' else 'no longer compiled'} before)")
            continue
        shared = set.intersection(*(set(_words(b)) for b in mine)) - set.union(*theirs)
        if shared:
            lines.append(f"{head} ({', '.join(w for w in _words(mine[0]) if w in shared)})")
            continue
        for b in mine:  # each against the binary of the kernel it is closest to
            closest = max(theirs, key=lambda words: len(words & set(_words(b))))
            own = [w for w in _words(b) if w not in closest]
            # a binary whose words are all the closest one's lacks some of them (e.g. a launch option)
            told = ", ".join(own) if own else "without " + ", ".join(sorted(closest - set(_words(b))))
            lines.append(f"{sign} 1 binary of `{kernel}` ({told})")
    return lines


def _autotune_line(sign: str, a: dict, configs: Optional[str] = None) -> str:
    key = "; ".join(part for part in (", ".join(f"{k}={v}" for k, v in a["key_values"].items()),
                                      ", ".join(f"{k}:{v}" for k, v in a["key_dtypes"].items())) if part)
    return f"{sign} autotune key of `{a['kernel']}` ({key})" + (configs or f", {a['configs']} configs")


def _entry_lines(old: dict, new: dict) -> list:
    lines = []
    old_b = {_canon(b): b for b in old["binaries"]}
    new_b = {_canon(b): b for b in new["binaries"]}
    lines += _binary_groups("+", [b for k, b in new_b.items() if k not in old_b], list(old_b.values()))
    lines += _binary_groups("-", [b for k, b in old_b.items() if k not in new_b], list(new_b.values()))

    def tune_key(a: dict) -> str:
        return _canon({k: v for k, v in a.items() if k != "configs"})

    old_a = {tune_key(a): a for a in old["autotune"]}
    new_a = {tune_key(a): a for a in new["autotune"]}
    lines += [_autotune_line("+", a) for k, a in new_a.items() if k not in old_a]
    lines += [_autotune_line("-", a) for k, a in old_a.items() if k not in new_a]
    lines += [_autotune_line("~", a, f": {old_a[k]['configs']} -> {a['configs']} configs")
              for k, a in new_a.items() if k in old_a and old_a[k]["configs"] != a["configs"]]
    rest = {k for k in set(old) | set(new) if k not in ("binaries", "autotune", "counts", *_UNCOMPARED)}
    lines += [f"~ {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(rest) if old.get(k) != new.get(k)]
    return lines


def _title(entry: dict) -> str:
    return f"layer {entry['layer']}"


def diff(committed: dict, session: dict) -> list:
    """The differences of ``session`` from ``committed`` as readable lines; [] when they agree.

    Seconds and where they were measured (``measured``) are never compared; nor is the Triton
    version (its effect shows in the binaries).
    """
    old = {_key(e): e for e in committed["layers"]}
    new = {_key(e): e for e in session["layers"]}
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            e = new[key]
            lines.append(f"+ {_title(e)}: {len(e['binaries'])} binaries, {len(e['autotune'])} "
                         f"autotune keys (not in the committed manifest)")
        elif key not in new:
            e = old[key]
            lines.append(f"- {_title(e)}: {len(e['binaries'])} binaries (not judged in this session)")
        else:
            changes = _entry_lines(old[key], new[key])
            if changes:
                lines.append(f"{_title(new[key])}: {len(old[key]['binaries'])} -> {len(new[key]['binaries'])} binaries")
                lines.extend("  " + line for line in changes)
    return lines


def accept(committed: Optional[dict], session: dict) -> dict:
    """The manifest to write on ``--ssd-manifest-update``: the session's, but an entry whose
    compared part did not change keeps its committed ``measured`` (no churn in review)."""
    old = {_key(e): e for e in (committed or {"layers": []})["layers"]}
    layers = []
    for entry in session["layers"]:
        before = old.get(_key(entry))
        same = before is not None and not _entry_lines(before, entry)
        layers.append({**entry, "measured": before["measured"]} if same and "measured" in before else entry)
    return {**session, "layers": layers}


# ---- the budget ----------------------------------------------------------------------------

def over_budget(verdicts: Iterable, max_binaries: Optional[int], max_seconds: Optional[float]) -> tuple:
    """(failures, notes) of the warmup budget over :class:`~pytest_ssd.report.VerdictRecord` s.

    Binaries count everywhere; seconds only where the warmup ran on a real GPU (compile-only
    seconds are a CPU's, not a load time), and a note says so.
    """
    failures, notes = [], []
    skipped = 0
    for v in verdicts:
        if max_binaries is not None and v.warmup_binaries > max_binaries:
            failures.append(f"warmup of {v.layer} [{v.where}] compiled {v.warmup_binaries} binaries, over "
                            f"--ssd-max-warmup-binaries {max_binaries} ({v.warmup})")
        if max_seconds is not None:
            if v.where != "cuda":
                skipped += 1
            elif v.warmup_seconds > max_seconds:
                failures.append(f"warmup of {v.layer} [cuda] took {v.warmup_seconds:.2f}s, over "
                                f"--ssd-max-warmup-seconds {max_seconds:g} ({v.warmup_binaries} binaries, "
                                f"{v.warmup_compile_seconds:.2f}s compiling; {v.warmup})")
    if skipped:
        notes.append(f"--ssd-max-warmup-seconds not applied to {skipped} compile-only verdict(s): seconds count "
                     f"only on a real GPU")
    return failures, notes


# ---- what the session checks at its end -----------------------------------------------------

@dataclass
class SessionChecks:
    """What the manifest options and the budget found at the end of a session."""

    lines: list = field(default_factory=list)
    failed: bool = False


def asked_for(settings) -> bool:
    """Whether any manifest or budget option is set (else the session's end does nothing here)."""
    s = settings
    return bool(s.manifest or s.manifest_check or s.max_warmup_binaries is not None
                or s.max_warmup_seconds is not None)


def session_checks(report, settings) -> Optional[SessionChecks]:
    """Write, check or update the manifest and apply the budget; None when no option asks for any.

    ``report``: the merged :class:`~pytest_ssd.report.SessionReport`; ``settings``: the
    :class:`~pytest_ssd.options.Settings` (``manifest``, ``manifest_check``, ``manifest_update``,
    ``max_warmup_binaries``, ``max_warmup_seconds``).
    """
    s = settings
    if not asked_for(s):
        return None
    checks = SessionChecks()
    manifest = from_report(report)
    n_binaries = sum(e["counts"]["binaries"] for e in manifest["layers"])
    if s.manifest:
        write(manifest, s.manifest)
        checks.lines.append(f"warmup manifest: {len(manifest['layers'])} layer config(s), {n_binaries} binaries "
                            f"written to {s.manifest}")
    if s.manifest_check:
        _check(manifest, s.manifest_check, s.manifest_update, checks)
    verdicts = [v for wr in report.workers for v in wr.verdicts]
    failures, notes = over_budget(verdicts, s.max_warmup_binaries, s.max_warmup_seconds)
    checks.lines += [f"WARMUP OVER BUDGET: {line}" for line in failures] + notes
    checks.failed = checks.failed or bool(failures)
    return checks


def _check(manifest: dict, path: str, update: bool, checks: SessionChecks) -> None:
    committed = None
    if os.path.exists(path) or not update:
        try:
            committed = load(path)
        except (OSError, ValueError) as e:
            checks.lines.append(f"WARMUP MANIFEST CANNOT BE CHECKED: {e}; rewrite it with "
                                f"--ssd-manifest-check {path} --ssd-manifest-update")
            checks.failed = True
            return
    changes = diff(committed or {"layers": []}, manifest)
    triton_note = []
    if committed is not None and committed.get("triton") != manifest.get("triton"):
        triton_note = [f"  (committed with Triton {committed.get('triton')}, this session has "
                       f"{manifest.get('triton')}: docs/manifest.md says which fields depend on it)"]
    if not changes:
        checks.lines.append(f"warmup manifest matches {path}: {len(manifest['layers'])} layer config(s), "
                            f"{sum(e['counts']['binaries'] for e in manifest['layers'])} binaries")
        return
    if update:
        write(accept(committed, manifest), path)
        layers = sum(not line.startswith(" ") for line in changes)
        checks.lines += [f"warmup manifest updated: {path} accepts the changes of {layers} layer config(s):",
                         *("  " + line for line in changes)]
        return
    checks.failed = True
    checks.lines += [f"WARMUP MANIFEST CHANGED: this session's warmups differ from {path}:",
                     *("  " + line for line in changes), *triton_note,
                     f"Review the change; accept it with --ssd-manifest-check {path} --ssd-manifest-update "
                     f"(rewrites the file), then commit it."]
