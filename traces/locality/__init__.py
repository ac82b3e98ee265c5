"""Routing locality: how cacheable a trace's expert routing is, measured before any simulation.

  grid      a trace as a dense [tokens, layers, top_k] id array with sequence boundaries
  cache     hit rates of LRU, LFU and Belady under the REFERENCE §4 convention (per-sequence reset, a token's
            lookups judged before any update, cold-start credit), and the persisting per-layer LRU that
            `moe-sim cache.scope=layer` replays
  sch       SCH(m) as moe-lrc's code computes it, every cache size in one pass (a numba stack algorithm)
  srp       Segment Routing best Performance
  stats     popularity, reuse distances, consecutive-token overlap, cross-layer co-activation
  analyze   `moe-trace analyze`: all of the above with bootstrap intervals, JSON, tables and figures
"""
