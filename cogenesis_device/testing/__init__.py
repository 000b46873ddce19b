"""Test infrastructure that ships with the package, because the demo and the benchmarks use it too:
real loopback servers, a fault-injecting proxy, and scripted remotes. Everything binds 127.0.0.1 only.
"""
from .proxy import FAULTS, FaultProxy, ProxyRecord
from .reference import reference_llama
from .scripted import ReplayServer, ScriptedRemote
from .servers import SERVERS, LoopbackServer, free_port

__all__ = ["FAULTS", "SERVERS", "FaultProxy", "LoopbackServer", "ProxyRecord", "ReplayServer", "ScriptedRemote",
           "free_port", "reference_llama"]
