"""Circuit breakers shared by the gateways: one state machine, in process memory or in Redis.

The model gateway keeps one breaker per deployment, the tool gateway one per upstream; both use
:class:`CircuitBreakers`. With a Redis URL every API replica and worker sees the same state, so
one process's failures open the breaker for all of them.
"""

from corral.resilience._breakers import Admission, BreakerState, CircuitBreakers

__all__ = ["Admission", "BreakerState", "CircuitBreakers"]
