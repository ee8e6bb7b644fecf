"""Policy decision latency: ``corral.policy.PolicyEngine`` next to bare ``cedarpy`` in one process.

Two policy sets: the shipped defaults (11 policies) and the defaults plus 489 generated ones
(500), shaped like a tenant's real policies: per-agent tool permits, cost and path forbids,
approval-forbids on HTTP tools by URL, group permits for invoking agents, model bans, permits
with constraints (see ``generated_policies``). None of the generated policies matches the
measured requests, so every variant reaches the same decision.

Three tool-call requests, each measured separately: ``fs.read_file`` (a read tool: ``allow``),
``fs.write_file`` in production (``require_approval``), and ``search-5``, a read tool that one
generated policy names (``allow``; the engine's slice for it holds one more policy). Entities:
the calling agent and the tool.

Warm variants, measured round-robin (one call of each in turn, ``--decisions`` times) so that
the noise of a shared machine falls on all of them alike:

* ``cedarpy, text inputs``: ``cedarpy.is_authorized(request, policy_text, entity_list,
  schema=schema_dict)``, everything parsed on every call (fewer calls: it is slow).
* ``cedarpy, pre-parsed``: the same call with ``PolicySet``, ``Entities`` and ``Schema``
  handles built once: the floor, the reference of the ratio column.
* ``engine, EntitySet``: ``engine.evaluate(request, entity_set)`` with entities from
  ``engine.entities(...)``, end to end (digest, decision, reasons).
* ``engine, entity list``: ``engine.evaluate(request, [agent, tool])``: entities parsed and
  checked against the schema on every call.

Cold: ``--cold`` times, build a new engine (or, bare, parse a new ``PolicySet`` and
``Schema``) and time its first decision (entities given as a list); for the engine, also the
first decision about ``search-5``, whose slice is parsed then (the slices of principals and
resources without policies of their own are parsed when the engine is built).

Latency is ``time.perf_counter_ns()`` around each call; p50 and p99 over the calls.

Run: ``python benchmarks/policy_latency.py [--decisions 5000] [--cold 20] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from corral.policy import (
    DEFAULT_POLICY_TEXT,
    Entity,
    EntityRef,
    PolicyContext,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
    cedar_schema,
)

TENANT = "acme"
AGENT = Entity(
    EntityRef("Agent", "support-bot"),
    {"tenant": TENANT, "owner": "ops", "risk_tier": "low", "status": "active"},
)


def make_tool(name: str, side_effect: str) -> Entity:
    attrs = {
        "tenant": TENANT,
        "owner": "ops",
        "side_effect": side_effect,
        "risk": "low",
        "kind": "builtin",
    }
    return Entity(EntityRef("Tool", name), attrs)


READ_TOOL = make_tool("fs.read_file", "read")
WRITE_TOOL = make_tool("fs.write_file", "write")
# In the 500-policy set, gen-search-5 (a permit with a constraint) names this tool.
OWN_POLICY_TOOL = make_tool("search-5", "read")

SCENARIOS = {
    "read tool (allow)": (READ_TOOL, "production", "allow"),
    "write tool, production (require_approval)": (WRITE_TOOL, "production", "require_approval"),
    "read tool with a policy of its own (allow)": (OWN_POLICY_TOOL, "production", "allow"),
}


def generated_policies(count: int) -> str:
    """``count`` policies of seven shapes, numbered, none matching the measured requests."""
    shapes = [
        '@id("gen-agent-tool-{i}")\n'
        '@reason("agent-{i} may update CRM records outside production")\n'
        'permit (principal == Agent::"agent-{i}", action == Action::"tool.call", '
        'resource == Tool::"crm.update-{i}")\nwhen {{ context.stage != "production" }};',
        '@id("gen-refund-cap-{i}")\n@reason("refunds over $50 are denied")\n'
        'forbid (principal, action == Action::"tool.call", '
        'resource == Tool::"billing.refund-{i}")\n'
        'when {{ context.estimated_cost_usd.greaterThan(decimal("50.00")) }};',
        '@id("gen-internal-url-{i}")\n@decision("require_approval")\n'
        '@approver_role("security")\n@reason("calls to internal-{i} need security approval")\n'
        'forbid (principal, action == Action::"tool.call", resource)\n'
        'when {{ resource.kind == "http" && context has url && '
        'context.url like "https://internal-{i}.example.com/*" }};',
        '@id("gen-team-invoke-{i}")\n@reason("team-{i} may invoke agent-{i}")\n'
        'permit (principal is User, action == Action::"agent.invoke", '
        'resource == Agent::"agent-{i}")\nwhen {{ principal.groups.contains("team-{i}") }};',
        '@id("gen-path-fence-{i}")\n@reason("agent-{i} stays out of other teams\' files")\n'
        'forbid (principal == Agent::"agent-{i}", action == Action::"tool.call", resource)\n'
        'when {{ context has path && context.path like "/srv/team-{i}/*" }};',
        '@id("gen-search-{i}")\n@constraint_max_calls("{calls}")\n@reason("search-{i} is capped")\n'
        'permit (principal, action == Action::"tool.call", resource == Tool::"search-{i}")\n'
        "when {{ principal.tenant == resource.tenant }};",
        '@id("gen-model-ban-{i}")\n@reason("agent-{i} may not use provider-{i}")\n'
        'forbid (principal == Agent::"agent-{i}", action == Action::"model.call", resource)\n'
        'when {{ resource.provider == "provider-{i}" }};',
    ]
    texts = [shapes[i % len(shapes)].format(i=i, calls=i % 10 + 1) for i in range(count)]
    return "\n\n".join(texts)


def policy_text(total: int) -> str:
    defaults = PolicyEngine([PolicySource("defaults", DEFAULT_POLICY_TEXT)])
    extra = total - len(defaults.policies)
    return DEFAULT_POLICY_TEXT + ("\n" + generated_policies(extra) if extra > 0 else "")


def make_request(tool: Entity, stage: str) -> PolicyRequest:
    context = PolicyContext(
        tenant=TENANT,
        stage=stage,
        requester="alice",
        arguments={"path": "notes/today.md"},
    )
    return PolicyRequest(AGENT.uid, "tool.call", tool.uid, context)


def cedar_request(request: PolicyRequest) -> dict[str, Any]:
    return {
        "principal": request.principal.to_cedar(),
        "action": {"type": "Action", "id": request.action},
        "resource": request.resource.to_cedar(),
        "context": request.context.to_cedar(),
    }


@dataclass
class Row:
    policies: int
    scenario: str
    variant: str
    samples_ns: list[int] = field(default_factory=list)

    def percentile_us(self, fraction: float) -> float:
        ordered = sorted(self.samples_ns)
        index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
        return ordered[index] / 1000


def round_robin(
    variants: dict[str, Callable[[], object]], rows: dict[str, Row], calls: int
) -> None:
    for _ in range(calls):
        for name, call in variants.items():
            started = time.perf_counter_ns()
            call()
            rows[name].samples_ns.append(time.perf_counter_ns() - started)


def measure_warm(total: int, text: str, decisions: int) -> list[Row]:
    engine = PolicyEngine([PolicySource("bench", text)])
    assert len(engine.policies) == total, (len(engine.policies), total)
    schema_dict = cedar_schema()
    schema = cedarpy.Schema.from_json_str(json.dumps(schema_dict))
    policy_set = cedarpy.PolicySet.from_str(text)
    rows: list[Row] = []
    for scenario, (tool, stage, expected) in SCENARIOS.items():
        request = make_request(tool, stage)
        entities = [AGENT, tool]
        entity_set = engine.entities(entities)
        bare_request = cedar_request(request)
        entity_list = [entity.to_cedar() for entity in entities]
        bare_entities = cedarpy.Entities.from_json_str(json.dumps(entity_list), schema)
        decision = engine.evaluate(request, entity_set)
        assert decision.decision == expected, decision
        bare = cedarpy.is_authorized(bare_request, policy_set, bare_entities, schema=schema)
        assert bare.allowed == (expected == "allow"), bare.diagnostics.errors
        variants: dict[str, Callable[[], object]] = {
            "cedarpy, pre-parsed": lambda r=bare_request, e=bare_entities: cedarpy.is_authorized(
                r, policy_set, e, schema=schema
            ),
            "engine, EntitySet": lambda r=request, e=entity_set: engine.evaluate(r, e),
            "engine, entity list": lambda r=request, e=entities: engine.evaluate(r, e),
        }
        named = {name: Row(total, scenario, name) for name in variants}
        round_robin(variants, named, decisions)
        text_row = Row(total, scenario, "cedarpy, text inputs")
        slow = {
            text_row.variant: lambda r=bare_request, e=entity_list: cedarpy.is_authorized(
                r, text, e, schema=schema_dict
            )
        }
        round_robin(
            slow, {text_row.variant: text_row}, max(50, decisions // (10 * (total // 10 or 1)))
        )
        rows.extend([text_row, *named.values()])
    return rows


def measure_cold(total: int, text: str, reps: int) -> tuple[list[Row], dict[str, float]]:
    """First decisions on a new engine (and on a newly parsed cedarpy policy set)."""
    schema_json = json.dumps(cedar_schema())
    generic = make_request(READ_TOOL, "production")
    own = make_request(OWN_POLICY_TOOL, "production")
    rows = {
        "cedarpy": Row(total, "read tool (allow)", "cedarpy: first decision"),
        "engine": Row(total, "read tool (allow)", "engine: first decision"),
        "engine, own policy": Row(
            total,
            "read tool with a policy of its own (allow)",
            "engine: first decision, slice parsed on the way",
        ),
    }
    builds: dict[str, list[int]] = {"cedarpy": [], "engine": []}
    for _ in range(reps):
        started = time.perf_counter_ns()
        engine = PolicyEngine([PolicySource("bench", text)])
        builds["engine"].append(time.perf_counter_ns() - started)
        for key, request, tool in (
            ("engine", generic, READ_TOOL),
            ("engine, own policy", own, OWN_POLICY_TOOL),
        ):
            started = time.perf_counter_ns()
            engine.evaluate(request, [AGENT, tool])
            rows[key].samples_ns.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        schema = cedarpy.Schema.from_json_str(schema_json)
        policy_set = cedarpy.PolicySet.from_str(text)
        builds["cedarpy"].append(time.perf_counter_ns() - started)
        entity_list = [AGENT.to_cedar(), READ_TOOL.to_cedar()]
        started = time.perf_counter_ns()
        cedarpy.is_authorized(cedar_request(generic), policy_set, entity_list, schema=schema)
        rows["cedarpy"].samples_ns.append(time.perf_counter_ns() - started)
    medians = {key: statistics.median(values) / 1e6 for key, values in builds.items()}
    return list(rows.values()), medians


def print_tables(warm: list[Row], cold: list[Row], builds: dict[int, dict[str, float]]) -> None:
    print("| policies | request | variant | calls | p50 µs | p99 µs | p50 / pre-parsed cedarpy |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for row in warm:
        [floor] = [
            r
            for r in warm
            if (r.policies, r.scenario, r.variant)
            == (row.policies, row.scenario, "cedarpy, pre-parsed")
        ]
        ratio = row.percentile_us(0.5) / floor.percentile_us(0.5)
        print(
            f"| {row.policies} | {row.scenario} | {row.variant} | {len(row.samples_ns)} | "
            f"{row.percentile_us(0.5):.1f} | {row.percentile_us(0.99):.1f} | {ratio:.2f}x |"
        )
    print()
    print("| policies | cold | builds | build p50 ms | first decision p50 µs | p99 µs |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in cold:
        who = "engine" if row.variant.startswith("engine") else "cedarpy"
        build = (
            "PolicyEngine(...): parse, validate, slices"
            if who == "engine"
            else "PolicySet.from_str + Schema.from_json_str"
        )
        print(
            f"| {row.policies} | {build}; {row.variant} | {len(row.samples_ns)} | "
            f"{builds[row.policies][who]:.1f} | {row.percentile_us(0.5):.1f} | "
            f"{row.percentile_us(0.99):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=5000, help="warm calls per variant")
    parser.add_argument("--cold", type=int, default=20, help="engines built for the cold rows")
    parser.add_argument("--sizes", default="11,500", help="policy counts, comma-separated")
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(
        f"python {platform.python_version()}, cedarpy {importlib.metadata.version('cedarpy')}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start",
        file=sys.stderr,
    )
    warm: list[Row] = []
    cold: list[Row] = []
    builds: dict[int, dict[str, float]] = {}
    for total in sizes:
        text = policy_text(total)
        gc.collect()
        warm.extend(measure_warm(total, text, args.decisions))
        cold_rows, builds[total] = measure_cold(total, text, args.cold)
        cold.extend(cold_rows)
    print_tables(warm, cold, builds)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([row.__dict__ for row in warm + cold], out)


if __name__ == "__main__":
    main()
