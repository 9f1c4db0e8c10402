%% bench_erts: the ERTS peer of the async pool benchmark. Loads the same
%% bdrv.so that bench_edrv runs in edrv into this emulator (started with
%% +A N), and runs the four cases through bdrv's RUN control op; the driver
%% times each run and reports it in a {bench_done, ...} message, and this
%% module also times each whole run with erlang:monotonic_time.
%%
%% Usage: erl -noshell +A N -pa BEAM_DIR -run bench_erts main DRIVERS_DIR K JOBS TRIPS BIG
%% Prints `RESULT erts CASE METRIC VALUE` lines (see bench/README.md).
-module(bench_erts).
-export([main/1]).

-define(WARMUP_TRIPS, 2000). % BENCH_WARMUP_TRIPS in bench.h
-define(SMALL_JOBS, 10000). % BENCH_SMALL_JOBS
-define(SMALL_REPS, 21).    % BENCH_SMALL_REPS

main([Dir, KS, JobsS, TripsS, BigS]) ->
    Status = try
                 bench(Dir, list_to_integer(KS), list_to_integer(JobsS),
                       list_to_integer(TripsS), list_to_integer(BigS))
             catch C:R:St ->
                     io:format(standard_error, "bench_erts: ~p:~p~n~p~n", [C, R, St]),
                     1
             end,
    halt(Status);
main(_) ->
    io:format(standard_error,
              "usage: erl -noshell +A N -run bench_erts main DRIVERS_DIR K JOBS TRIPS BIG~n", []),
    halt(2).

bench(Dir, K, Jobs, Trips, Big) ->
    N = erlang:system_info(thread_pool_size),
    io:format("INFO erts pool_threads ~b~n", [N]),
    io:format("INFO erts schedulers ~b~n", [erlang:system_info(schedulers_online)]),
    ok = erl_ddll:load_driver(Dir, "bdrv"),
    Port = open_port({spawn_driver, "bdrv"}, [binary]),
    %% Warm-up (bench.h): async threads, allocators, page faults.
    {_, 0, _, _, _} = run(Port, 0, Jobs, 0, 0),
    {_, 0, _, _, _} = run(Port, 1, ?WARMUP_TRIPS, 0, 0),
    throughput(Port, burst, Jobs, 0, 0),
    throughput(Port, work, Jobs, K, 0),
    throughput(Port, keys, Jobs, 0, 64),
    growth(Port, Big),
    {_, 0, P50, P99, _} = run(Port, 1, Trips, 0, 0),
    result(latency, p50_us, P50 / 1.0e3),
    result(latency, p99_us, P99 / 1.0e3),
    port_close(Port),
    0.

throughput(Port, Case, Jobs, K, NKeys) ->
    {Ns, Violations, _, _, HostNs} = run(Port, 0, Jobs, K, NKeys),
    Violations =/= 16#ffffffff orelse error(driver_async_failed),
    result(Case, jobs_per_s, Jobs * 1.0e9 / Ns),
    result(Case, host_jobs_per_s, Jobs * 1.0e9 / HostNs),
    NKeys > 0 andalso result(Case, violations, Violations).

%% The growth case: small bursts, then two of Big jobs (bench.h).
growth(Port, Big) ->
    Ns = lists:sort([element(1, run(Port, 0, ?SMALL_JOBS, 0, 0)) || _ <- lists:seq(1, ?SMALL_REPS)]),
    result(burst10k, jobs_per_s, ?SMALL_JOBS * 1.0e9 / lists:nth((?SMALL_REPS + 1) div 2, Ns)),
    throughput(Port, burstbig, Big, 0, 0),
    %% Once more, on the heap the first left: the pages it kept are mapped.
    throughput(Port, burstbig2, Big, 0, 0).

%% One RUN of bdrv (see bdrv.c): {Ns, Violations, P50, P99, HostNs}.
run(Port, Mode, Count, K, NKeys) ->
    T0 = erlang:monotonic_time(nanosecond),
    _ = erlang:port_control(Port, 1, <<Mode:32, Count:32, K:32, NKeys:32>>),
    receive
        {bench_done, Ns, Violations, P50, P99} ->
            {Ns, Violations, P50, P99, erlang:monotonic_time(nanosecond) - T0}
    after 300000 ->
            error(no_bench_done_within_300_s)
    end.

result(Case, Metric, V) when is_float(V) ->
    io:format("RESULT erts ~s ~s ~.2f~n", [Case, Metric, V]);
result(Case, Metric, V) ->
    io:format("RESULT erts ~s ~s ~b~n", [Case, Metric, V]).
