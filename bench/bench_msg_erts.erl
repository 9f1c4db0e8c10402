%% bench_msg_erts: the ERTS peer of the message path benchmark. Loads the
%% same mdrv.so and mdrvp.so that bench_msg and bench_msg.lua run in edrv,
%% and times the same cases from Erlang processes (see bench_msg.c):
%%   control  TRIPS port_control(P, 1, <<"hello">>)
%%   call     TRIPS port_call(P, 1, {hello, 42})
%%   command  TRIPS port_command(P, <<"hello">>), then receive {P, {data, _}}
%%   pipe     PIPE port_commands, then PIPE receives (a port of mdrvp, the
%%            driver with ERL_DRV_FLAG_USE_PORT_LOCKING)
%%   pipe2p   two processes, each with its own mdrvp port, PIPE/2 each,
%%            timed from the go to the moment both are done
%%   command2p  command round trips as pipe2p: 4 x TRIPS in each of two
%%            processes, each on its own mdrvp port
%%
%% Usage: erl -noshell -pa BEAM_DIR -run bench_msg_erts main DRIVERS_DIR TRIPS PIPE
%% Prints `RESULT erts CASE METRIC VALUE` lines (see bench/README.md).
-module(bench_msg_erts).
-export([main/1]).

-define(CALL_TERM, {hello, 42}).

main([Dir, TripsS, PipeS]) ->
    Status = try
                 bench(Dir, list_to_integer(TripsS), list_to_integer(PipeS))
             catch C:R:St ->
                     io:format(standard_error, "bench_msg_erts: ~p:~p~n~p~n", [C, R, St]),
                     1
             end,
    halt(Status);
main(_) ->
    io:format(standard_error,
              "usage: erl -noshell -run bench_msg_erts main DRIVERS_DIR TRIPS PIPE~n", []),
    halt(2).

bench(Dir, Trips, Pipe) ->
    io:format("INFO erts schedulers ~b~n", [erlang:system_info(schedulers_online)]),
    ok = erl_ddll:load_driver(Dir, "mdrv"),
    ok = erl_ddll:load_driver(Dir, "mdrvp"),
    P = open_port({spawn_driver, "mdrv"}, [binary]),
    PP = open_port({spawn_driver, "mdrvp"}, [binary]),
    %% Warm-up, as bench_msg: a tenth of each round-trip case, two whole
    %% pipelined bursts.
    WT = Trips div 10 + 1,
    controls(P, WT), calls(P, WT), commands(P, WT), pipelined(PP, Pipe), pipelined(PP, Pipe),
    timed(control, fun() -> controls(P, Trips) end, Trips, false),
    timed(call, fun() -> calls(P, Trips) end, Trips, false),
    timed(command, fun() -> commands(P, Trips) end, Trips, false),
    timed(pipe, fun() -> pipelined(PP, Pipe) end, Pipe, true),
    %% pipe2p's processes warm up as pipe did, with their half.
    two(pipe2p, msgs_per_s, fun pipelined/2, Pipe div 2, Pipe div 2),
    two(command2p, trips_per_s, fun commands/2, 4 * Trips, WT),
    port_close(P),
    port_close(PP),
    0.

timed(Case, F, N, Rate) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = F(),
    Ns = erlang:monotonic_time(nanosecond) - T0,
    result(Case, us_per_op, Ns / 1.0e3 / N),
    Rate andalso result(Case, msgs_per_s, N * 1.0e9 / Ns).

controls(_, 0) -> ok;
controls(P, N) ->
    "HELLO" = erlang:port_control(P, 1, <<"hello">>),
    controls(P, N - 1).

calls(_, 0) -> ok;
calls(P, N) ->
    ?CALL_TERM = erlang:port_call(P, 1, ?CALL_TERM),
    calls(P, N - 1).

commands(_, 0) -> ok;
commands(P, N) ->
    true = erlang:port_command(P, <<"hello">>),
    receive {P, {data, <<"hello">>}} -> ok end,
    commands(P, N - 1).

pipelined(P, N) ->
    send(P, N),
    receive_n(P, N).

send(_, 0) -> ok;
send(P, N) ->
    true = erlang:port_command(P, <<"hello">>),
    send(P, N - 1).

receive_n(_, 0) -> ok;
receive_n(P, N) ->
    receive {P, {data, <<"hello">>}} -> receive_n(P, N - 1)
    after 10000 -> error(no_echo_within_10_s)
    end.

%% Case F, N times in each of two processes (2N in all), each with its own
%% port (it owns it: the echoes come to it), each warmed up with Warm, twice.
two(Case, Metric, F, N, Warm) ->
    Self = self(),
    Total = 2 * N,
    Pids = [spawn_link(fun() -> two_proc(Self, F, N, Warm) end) || _ <- [1, 2]],
    [receive {ready, Pid} -> ok end || Pid <- Pids],
    T0 = erlang:monotonic_time(nanosecond),
    [Pid ! go || Pid <- Pids],
    [receive {done, Pid} -> ok end || Pid <- Pids],
    Ns2 = erlang:monotonic_time(nanosecond) - T0,
    result(Case, us_per_op, Ns2 / 1.0e3 / Total),
    result(Case, Metric, Total * 1.0e9 / Ns2).

two_proc(Parent, F, N, Warm) ->
    P = open_port({spawn_driver, "mdrvp"}, [binary]),
    ok = F(P, Warm),
    ok = F(P, Warm),
    Parent ! {ready, self()},
    receive go -> ok end,
    ok = F(P, N),
    Parent ! {done, self()},
    port_close(P).

result(Case, Metric, V) ->
    io:format("RESULT erts ~s ~s ~.4f~n", [Case, Metric, float(V)]).
