"""
``Coordinator``: the seed's CoordinatorAgent with monitoring built in.

``route`` classifies the query and selects agents through pluggable
objects; ``complete`` records execution, quality, acceptance and each
agent's own run.  One record per request, written by ``complete``, then
one per agent run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from livemon._checks import _short
from livemon.context import RequestContext
from livemon.exceptions import InvalidField
from livemon.feedback import FeedbackLoop
from livemon.monitor import Monitor
from livemon.record import AgentOutcome


@dataclasses.dataclass(frozen=True)
class Intent:
    """What the query is about."""

    category: str
    domains: tuple[str, ...] = ()
    complexity: int = 1


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which agents to use, how, and how sure the selector is."""

    agents: tuple[str, ...]
    strategy: str
    confidence: float


@dataclasses.dataclass(frozen=True)
class AgentResult:
    """One agent's own run within a request (``RequestContext.log_agent``).

    ``outcome``: ``"selected"`` (its output was used), ``"merged"``,
    ``"discarded"``, ``"cancelled"`` (stopped because a sibling won), an
    ``AgentOutcome``, or None (not said).
    """

    name: str
    execution_time_ms: float | None = None
    success: bool | None = None
    error: str | BaseException | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    quality_score: float | None = None
    outcome: str | AgentOutcome | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """What came back from running the agents.

    ``accepted`` None means "detect it": accepted when the agents used
    are the ones suggested.  ``agents``: each agent's own run, recorded
    as agent runs (per-agent latency, success, tokens and outcome); the
    request's own figures stay what the whole request did.
    """

    agents_used: tuple[str, ...]
    success: bool
    execution_time_ms: float | None = None
    error: str | BaseException | None = None
    quality_score: float | None = None
    task_completed: bool | None = None
    code_valid: bool | None = None
    tests_passed: bool | None = None
    token_count: int | None = None
    context_size_kb: float | None = None
    accepted: bool | None = None
    override_reason: str | None = None
    agents: Sequence[AgentResult] = ()


@dataclasses.dataclass
class RoutingDecision:
    """``route``'s answer; hand it back to ``complete``."""

    query: str
    intent: Intent
    selection: Selection
    context: RequestContext

    @property
    def agents(self) -> tuple[str, ...]:
        """The agents chosen."""
        return self.selection.agents


class Classifier(Protocol):
    """Turns a query into an ``Intent``."""

    def classify(self, query: str) -> Intent: ...


class Selector(Protocol):
    """Chooses agents for an intent, and names stand-ins for them."""

    def select(self, intent: Intent, query: str) -> Selection: ...

    def alternatives(self, intent: Intent) -> Sequence[str]: ...


DEFAULT_KEYWORDS: Mapping[str, Sequence[str]] = {
    "code": ("code", "bug", "function", "python", "test", "refactor"),
    "data": ("sql", "query", "table", "csv", "database"),
    "security": ("vulnerability", "auth", "password", "cve"),
    "writing": ("write", "document", "summary", "email"),
}
DEFAULT_AGENTS: Mapping[str, Sequence[str]] = {
    "code": ("coder", "reviewer"),
    "data": ("data_analyst",),
    "security": ("security_auditor", "coder"),
    "writing": ("writer",),
    "general": ("generalist",),
}


class KeywordClassifier:
    """Category by keyword count; domains are every category that matched.

    Ties go to the first category listed; no match is ``general``.
    Complexity grows with the query's length (1 per 20 words, 1..10).
    """

    def __init__(
        self, keywords: Mapping[str, Sequence[str]] = DEFAULT_KEYWORDS
    ) -> None:
        self.keywords = {k: tuple(v) for k, v in keywords.items()}

    def classify(self, query: str) -> Intent:
        words = query.lower().split()
        hits = {
            category: sum(word in words for word in keys)
            for category, keys in self.keywords.items()
        }
        matched = tuple(c for c, n in hits.items() if n)
        best = max(matched, key=lambda c: hits[c]) if matched else "general"
        return Intent(best, matched, min(10, 1 + len(words) // 20))


class TableSelector:
    """Agents from a category table; parallel when more than one.

    Confidence is the share of the query's matched domains that the
    chosen category covers, floored at 0.5.  ``alternatives`` (default:
    the generalist) stand in for demoted agents and broaden low-confidence
    routes.
    """

    def __init__(
        self,
        agents: Mapping[str, Sequence[str]] = DEFAULT_AGENTS,
        alternatives: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.agents = {k: tuple(v) for k, v in agents.items()}
        self._alternatives = {
            k: tuple(v) for k, v in (alternatives or {}).items()
        }

    def alternatives(self, intent: Intent) -> Sequence[str]:
        return self._alternatives.get(intent.category, self.agents["general"])

    def select(self, intent: Intent, query: str) -> Selection:
        agents = self.agents.get(intent.category) or self.agents["general"]
        share = 1.0 / len(intent.domains) if intent.domains else 0.5
        return Selection(
            agents,
            "parallel" if len(agents) > 1 else "single",
            max(0.5, share),
        )


class Coordinator:
    """Routes queries to agents and monitors every request inline.

    Args:
        monitor: where records go (default: a ``Monitor()`` from config,
            which ``close()`` closes; a monitor passed in stays open).
        classifier: has ``classify(query) -> Intent``.
        selector: has ``select(intent, query) -> Selection``.
        feedback: adjusts routes from the recent window (default: none);
            without its own thread it is updated from ``route``, never
            raising into it.

    Use it as ``with Coordinator() as coordinator:``, or call ``close()``.
    """

    def __init__(
        self,
        monitor: Monitor | None = None,
        classifier: Classifier | None = None,
        selector: Selector | None = None,
        feedback: FeedbackLoop | None = None,
    ) -> None:
        self._owns_monitor = monitor is None
        self.monitor = monitor if monitor is not None else Monitor()
        self.classifier = classifier or KeywordClassifier()
        self.selector = selector or TableSelector()
        self.feedback = feedback

    def route(self, query: str) -> RoutingDecision:
        """Classify, select agents, and start the request's record.

        An exception from the classifier, the selector or the feedback
        loop propagates unchanged, after the request is recorded as
        failed with it (as an exception in a ``with monitor.request()``
        block is): a request never vanishes uncounted.
        """
        context = self.monitor.request(query)
        try:
            return self._routed(query, context)
        except BaseException as exc:
            context.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _routed(self, query: str, context: RequestContext) -> RoutingDecision:
        intent = self.classifier.classify(query)
        context.log_intent(
            category=intent.category,
            domains=_names(intent.domains),
            complexity=intent.complexity,
        )
        selection = self.selector.select(intent, query)
        if self.feedback is not None:
            if not self.feedback.running:
                self.feedback.maybe_update()  # guarded: counts, never raises
            selection = self._adjusted(intent, selection, context.request_id)
        context.log_routing(
            suggested_agents=_names(selection.agents),
            strategy=selection.strategy,
            confidence=selection.confidence,
        )
        return RoutingDecision(query, intent, selection, context)

    def close(self) -> None:
        """Close the monitor if this coordinator created it. Idempotent."""
        if self._owns_monitor:
            self.monitor.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _adjusted(
        self, intent: Intent, selection: Selection, request_id: int
    ) -> Selection:
        """Apply the feedback loop's adjustments to a selection.

        Demoted agents give way to a stand-in, slow agents leave parallel
        fan-outs, confidence is scaled by the agents' multipliers, and a
        route below its category's threshold is broadened.  A small
        exploration share of requests routes unchanged, so a demoted
        agent keeps the traffic it needs to show it has recovered.
        """
        feedback = self.feedback
        if feedback is None:
            return selection
        if feedback.explores(request_id):
            return selection
        demoted = feedback.confidence_multiplier
        spare = [
            a
            for a in self.selector.alternatives(intent)
            if a not in selection.agents
            and demoted(a) == 1.0
            and not feedback.is_capped(a)
        ]
        agents = [
            spare.pop(0) if demoted(a) < 1.0 and spare else a
            for a in selection.agents
        ]
        if len(agents) > 1:
            # Latency is known per request, not per agent: when every agent
            # of a fan-out looks slow, a stand-in is the better bet.
            agents = [a for a in agents if not feedback.is_capped(a)] or (
                spare[:1] or agents[:1]
            )
        confidence = selection.confidence * min(demoted(a) for a in agents)
        if confidence < feedback.threshold(intent.category):
            agents += spare[:1]
        if tuple(agents) == selection.agents and (
            confidence == selection.confidence
        ):
            return selection
        strategy = "parallel" if len(agents) > 1 else "single"
        return Selection(tuple(agents), strategy, confidence)

    def complete(self, decision: RoutingDecision, result: Result) -> bool:
        """Record execution, quality, acceptance and the agents' runs.

        Writes the request's record, then one agent run per
        ``result.agents`` entry.  Returns whether the request's record
        reached the ring.  A ``decision`` that ``route`` did not return
        is counted in ``invalid`` (there is no request to record); a
        ``result`` that is not a ``Result`` is counted too, and the
        request recorded with what ``route`` logged.

        Raises:
            InvalidField: either is wrong, in strict mode only.
        """
        given: tuple[object, object] = (decision, result)  # as called
        if not isinstance(given[0], RoutingDecision):
            reason = (
                f"must be route()'s RoutingDecision, not {_short(decision)}"
            )
            if self.monitor.strict:
                raise InvalidField("decision", reason)
            self.monitor.counters.invalid += 1
            return False
        context = decision.context
        if not isinstance(given[1], Result):
            context._bad(
                "result", f"must be a Result, not {_short(result)}", 0
            )
            return context.end()
        used = _names(result.agents_used)
        context.log_execution(
            actual_agents=used,
            execution_time_ms=result.execution_time_ms,
            success=result.success,
            error=result.error,
            token_count=result.token_count,
            context_size_kb=result.context_size_kb,
        )
        context.log_quality(
            score=result.quality_score,
            task_completed=result.task_completed,
            code_valid=result.code_valid,
            tests_passed=result.tests_passed,
        )
        accepted = result.accepted
        if accepted is None and isinstance(used, list | tuple):
            try:
                accepted = set(used) == set(decision.agents)
            except Exception:  # unhashable or hostile: counted by the check
                accepted = None
        context.log_acceptance(
            accepted=accepted, override_reason=result.override_reason
        )
        _log_runs(context, result.agents)
        return context.end()


def _log_runs(context: RequestContext, runs: Any) -> None:
    """Log each ``AgentResult`` of ``Result.agents`` as an agent run.

    Anything else (a dict, a name, a non-sequence) is counted in
    ``invalid``, or raises ``InvalidField`` in strict mode: never an
    ``AttributeError`` into the request, which would also lose its record.
    """
    if runs is None:
        return
    try:
        entries = list(runs) if not isinstance(runs, str | bytes) else None
    except Exception:  # not iterable, or a hostile __iter__
        entries = None
    if entries is None:
        reason = f"must be a sequence of AgentResult, not {_short(runs)}"
        context._bad("agents", reason, None)
        return
    for run in entries:
        if not isinstance(run, AgentResult):
            reason = f"holds {_short(run)}, not an AgentResult"
            context._bad("agents", reason, None)
            continue
        context.log_agent(
            run.name,
            execution_time_ms=run.execution_time_ms,
            success=run.success,
            error=run.error,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            quality_score=run.quality_score,
            outcome=run.outcome,
        )


def _names(values: Any) -> Any:
    """``values`` as a list for the record's checks; what is not a
    collection of names (None, a number) is handed on as it is, for the
    check to count (strict: raise), never a TypeError into the request."""
    if isinstance(values, list | tuple) or values is None:
        return values
    try:
        return list(values) if not isinstance(values, str | bytes) else values
    except Exception:  # not iterable, or a hostile __iter__
        return values
