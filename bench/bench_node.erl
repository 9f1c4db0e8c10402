%% bench_node: an Erlang process on this BEAM node uses a driver's port three
%% ways, in one run, and times the same operations on each:
%%   local  a port of this node (ERTS itself, no distribution)
%%   beam   a second BEAM node on this machine, started here (peer): a
%%          process there owns a local port and echoes through it, so that
%%          each operation crosses the distribution both ways
%%   edrv   an edrv node on this machine (`edrv --node`, started here),
%%          through the module edrv: the port is the edrv node's
%% The cases, on the same mdrv.so / mdrvp.so as bench/run_msg (bench/mdrv.c):
%%   control  TRIPS port_control(P, 1, <<"hello">>) round trips
%%   command  TRIPS port_command(P, <<"hello">>), then receive its
%%            {_, {data, <<"hello">>}}
%%   pipe     PIPE commands (a port of mdrvp), then PIPE receives
%%
%% Usage (bench/run_node sets it up: epmd on 127.0.0.1, its port in
%% ERL_EPMD_PORT, this node started with -name):
%%   erl -noshell -name bench@127.0.0.1 -setcookie C -pa BEAM_DIR -pa EBIN
%%       -run bench_node main EDRV DRIVERS_DIR TRIPS PIPE SPIN PEER...
%% SPIN is the edrv node's --spin (microseconds). PEERs run in the order
%% given. Prints `RESULT PEER CASE METRIC VALUE`.
-module(bench_node).
-export([main/1, echo_start/1]).

-define(WAIT_MS, 30000).

main([Edrv, Dir, TripsS, PipeS, Spin | Peers]) ->
    Status = try
                 put(spin, Spin),
                 bench(Edrv, Dir, list_to_integer(TripsS), list_to_integer(PipeS), Peers)
             catch C:R:St ->
                     io:format(standard_error, "bench_node: ~p:~p~n~p~n", [C, R, St]),
                     1
             end,
    halt(Status);
main(_) ->
    io:format(standard_error, "usage: erl -noshell -name N -run bench_node main"
              " EDRV DRIVERS_DIR TRIPS PIPE SPIN PEER...~n", []),
    halt(2).

bench(Edrv, Dir, Trips, Pipe, Peers) ->
    [run(list_to_atom(Peer), Edrv, Dir, Trips, Pipe) || Peer <- Peers],
    0.

%% Each peer gets an object with the three operations; the timing code
%% is the same for all.
run(Peer, Edrv, Dir, Trips, Pipe) ->
    {Ops, Stop} = setup(Peer, Edrv, Dir),
    WT = Trips div 10 + 1,
    #{control := Control, command := Command, pipe := PipeF} = Ops,
    ok = Control(WT), ok = Command(WT), ok = PipeF(Pipe div 10 + 2),
    timed(Peer, control, Control, Trips, false),
    timed(Peer, command, Command, Trips, false),
    timed(Peer, pipe, PipeF, Pipe, true),
    Stop().

timed(Peer, Case, F, N, Rate) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = F(N),
    Ns = erlang:monotonic_time(nanosecond) - T0,
    result(Peer, Case, us_per_op, Ns / 1.0e3 / N),
    Rate andalso result(Peer, Case, msgs_per_s, N * 1.0e9 / Ns).

result(Peer, Case, Metric, V) ->
    io:format("RESULT ~s ~s ~s ~.4f~n", [Peer, Case, Metric, float(V)]).

%% ---- the peers ----------------------------------------------------------------

setup(local, _Edrv, Dir) ->
    ok = load(erl_ddll:load_driver(Dir, "mdrv")),
    ok = load(erl_ddll:load_driver(Dir, "mdrvp")),
    P = open_port({spawn_driver, "mdrv"}, [binary]),
    PP = open_port({spawn_driver, "mdrvp"}, [binary]),
    {ops(fun erlang:port_control/3, fun erlang:port_command/2, P, P, PP, PP),
     fun() -> port_close(P), port_close(PP) end};
setup(beam, _Edrv, Dir) ->
    {ok, Peer, Node} = peer:start(#{name => bench_beam, host => "127.0.0.1",
                                     longnames => true,
                                     args => ["-setcookie", atom_to_list(erlang:get_cookie()),
                                              "-pa", filename:dirname(code:which(?MODULE))]}),
    Self = self(),
    %% one echo process for control and command (mdrv), one for the
    %% pipelined commands (mdrvp)
    E = erpc:call(Node, ?MODULE, echo_start, [{Dir, Self, "mdrv"}]),
    EP = erpc:call(Node, ?MODULE, echo_start, [{Dir, Self, "mdrvp"}]),
    %% the echo process answers a control with {Echo, {control, Reply}} and
    %% a command's echo with {Echo, {data, D}}
    Control = fun(Echo, Op, Data) ->
                      Echo ! {control, Op, Data},
                      receive {Echo, {control, R}} -> R end
              end,
    Command = fun(Echo, Data) -> Echo ! {command, Data}, true end,
    {ops(Control, Command, E, E, EP, EP), fun() -> peer:stop(Peer) end};
setup(edrv, Edrv, Dir) ->
    Node = 'bench_edrv@127.0.0.1',
    Args = ["--node", atom_to_list(Node), "--cookie", atom_to_list(erlang:get_cookie()),
            "--listen", "127.0.0.1", "--drivers", Dir, "--spin", get(spin)],
    Keeper = open_port({spawn_executable, Edrv},
                       [{args, Args}, {line, 1000}, stderr_to_stdout, exit_status]),
    receive
        {Keeper, {data, {_, "edrv node " ++ _}}} -> ok;
        {Keeper, {exit_status, S}} -> error({edrv_node_exited, S})
    after ?WAIT_MS -> error(edrv_node_did_not_start)
    end,
    ok = load(edrv:load_driver(Node, Dir, "mdrv")),
    ok = load(edrv:load_driver(Node, Dir, "mdrvp")),
    P = edrv:open_port(Node, {spawn_driver, "mdrv"}, [binary]),
    PP = edrv:open_port(Node, {spawn_driver, "mdrvp"}, [binary]),
    {ops(fun edrv:port_control/3, fun edrv:port_command/2, P, P, PP, PP),
     fun() ->
             edrv:port_close(P),
             edrv:port_close(PP),
             {os_pid, OsPid} = erlang:port_info(Keeper, os_pid),
             os:cmd("kill -TERM " ++ integer_to_list(OsPid)),
             receive {Keeper, {exit_status, _}} -> ok after ?WAIT_MS -> ok end
     end}.

load(ok) -> ok;
load({error, already_loaded}) -> ok;
load(Error) -> error(Error).

%% Target T answers on From (the port itself, or the echo process).
ops(Control, Command, T, From, PT, PFrom) ->
    #{control => fun(N) -> controls(Control, T, N) end,
      command => fun(N) -> commands(Command, T, From, N) end,
      pipe => fun(N) -> send(Command, PT, N), receive_n(PFrom, N) end}.

controls(_, _, 0) -> ok;
controls(Control, T, N) ->
    "HELLO" = Control(T, 1, <<"hello">>),
    controls(Control, T, N - 1).

commands(_, _, _, 0) -> ok;
commands(Command, T, From, N) ->
    true = Command(T, <<"hello">>),
    receive {From, {data, <<"hello">>}} -> ok end,
    commands(Command, T, From, N - 1).

send(_, _, 0) -> ok;
send(Command, T, N) ->
    true = Command(T, <<"hello">>),
    send(Command, T, N - 1).

receive_n(_, 0) -> ok;
receive_n(From, N) ->
    receive {From, {data, <<"hello">>}} -> receive_n(From, N - 1)
    after ?WAIT_MS -> error(no_echo)
    end.

%% ---- the echo process on the second BEAM node ------------------------------------

echo_start({Dir, Client, Name}) ->
    Parent = self(),
    Pid = spawn(fun() ->
                        ok = load(erl_ddll:load_driver(Dir, "mdrv")),
                        ok = load(erl_ddll:load_driver(Dir, "mdrvp")),
                        P = open_port({spawn_driver, Name}, [binary]),
                        Parent ! {self(), ready},
                        echo_loop(P, Client)
                end),
    receive {Pid, ready} -> Pid end.

echo_loop(P, Client) ->
    receive
        {command, Data} ->
            true = erlang:port_command(P, Data);
        {P, {data, D}} ->
            Client ! {self(), {data, D}};
        {control, Op, Data} ->
            Client ! {self(), {control, erlang:port_control(P, Op, Data)}}
    end,
    echo_loop(P, Client).
