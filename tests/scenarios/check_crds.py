"""Validate Prometheus Operator resources (monitoring.coreos.com/v1: PodMonitor, ServiceMonitor,
PrometheusRule...) against the operator's own schemas, as the typed models of the PyPI package
cloudcoil.models.prometheus_operator (generated from the operator's CRDs) have them: types,
enumerations and patterns are checked by the models, and unknown fields (which the models, like a
lenient API server, would drop) are reported.

    python3 check_crds.py FILE...

Prints one line per resource, "OK kind/name" or "ERROR kind/name: ...", and exits 1 if any failed.
Documents of other API groups are skipped.
"""

import sys

import yaml
from cloudcoil.models.prometheus_operator import v1
from pydantic import ValidationError


def dropped(given, kept, path=""):
    """Paths of `given` that did not survive validation (unknown fields)."""
    out = []
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                out.append(f"{path}.{key}")
            else:
                out += dropped(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list):
        for i, value in enumerate(given):
            other = kept[i] if isinstance(kept, list) and i < len(kept) else None
            out += dropped(value, other, f"{path}[{i}]")
    return out


def check(doc):
    kind = doc.get("kind", "?")
    name = f"{kind.lower()}/{doc.get('metadata', {}).get('name', '?')}"
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        return None
    model = getattr(v1, kind, None)
    if model is None:
        return f"ERROR {name}: no model for kind {kind} in monitoring.coreos.com/v1"
    try:
        parsed = model.model_validate(doc)
    except ValidationError as e:
        return f"ERROR {name}: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
    unknown = dropped(doc, parsed.model_dump(by_alias=True, exclude_none=True, mode="json"))
    if unknown:
        return f"ERROR {name}: unknown fields {', '.join(unknown)}"
    return f"OK {name}"


def main():
    failed = False
    for path in sys.argv[1:]:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                line = check(doc)
                if line:
                    print(f"{line} ({path})")
                    failed |= line.startswith("ERROR")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
