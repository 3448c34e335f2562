"""The offline-autonomy room: what lets a node keep working while the API server is out of reach.

Online, the recorder tees the upstream's answers into the cache; offline, the local side answers from it as the API
server would. Modules:
    wiring   builds both for server (`cache_hooks`): opens the cache, the writer and the token book
    record   the tee: upstream list/get/watch answers → cache writes, never delaying the client
    local    offline answers (get, list, watch) from the client's own views, and the offline writes
    views    which cache entry a request reads or writes (pure); shared by record, local, filters and pool
    writes   the offline write policy: a pure decision per write the shell dispatches on
    tokens   TokenRequests offline: kept answers while valid, then tokens minted here (files under the cache dir)
Imports go one way: wiring → record / local → views → cache; writes and tokens are used by local (tokens also by
record, to remember upstream answers) and import neither. No re-exports: import the module you need
(`from edgeproxy.autonomy import local`).
"""
