#!/usr/bin/env escript
%% diff.escript: runs one scenario in erl and in edrv and compares them.
%%
%% Usage: escript diff.escript DIFF_RUNNER DRIVERS_DIR SCENARIO
%%
%% A scenario (read with file:consult/1) is a list of steps:
%%   {load, Name}  {unload, Name}  {open, Command, Opts}  {close, Idx}
%%   {command, Idx, Data}  {control, Idx, Op, Data}  {call, Idx, Op, Term}
%% load and unload are erl_ddll:load_driver/2 and unload_driver/1 in erl.
%% Every open step takes the next port index (1, 2, ...), failed or not.
%% Each step gives {ok, Value} or {error, Reason}, then the messages that
%% arrive within 50 ms. Here the steps run in a fresh process that traps
%% exits; diff_runner runs them in edrv. Ports become {port, K} (K by first
%% appearance), the running process's pid `self`, other pids `pid`; then the
%% two runs must be equal step by step. Exit status 0 when they are.
%% With DIFF_VERBOSE set, the steps that match are printed too.
-mode(compile).

-define(WAIT, 50).

main([Runner, Dir, Scenario]) ->
    {ok, Steps} = file:consult(Scenario),
    Name = filename:basename(Scenario, ".scenario"),
    Erl = normalize(run_erl(Dir, Steps)),
    Edrv = normalize(run_edrv(Runner, Dir, Steps)),
    Rows = lists:zip(lists:seq(1, length(Steps)), lists:zip3(Steps, Erl, Edrv)),
    Verbose = os:getenv("DIFF_VERBOSE") =/= false,
    [report(I, S, E, D, Verbose) || {I, {S, E, D}} <- Rows],
    Bad = [I || {I, {_, E, D}} <- Rows, E =/= D],
    case Bad of
        [] ->
            io:format("diff ~s: ~b steps match~n", [Name, length(Steps)]);
        _ ->
            io:format("diff ~s: ~b of ~b steps differ~n", [Name, length(Bad), length(Steps)]),
            halt(1)
    end;
main(_) ->
    io:format("usage: diff.escript DIFF_RUNNER DRIVERS_DIR SCENARIO~n"),
    halt(2).

report(I, S, E, E, true) -> io:format("step ~b: ~p~n  both: ~p~n", [I, S, E]);
report(_, _, E, E, false) -> ok;
report(I, S, E, D, _) -> io:format("step ~b: ~p~n  erl:  ~p~n  edrv: ~p~n", [I, S, E, D]).

%% ---- erl -------------------------------------------------------------------

run_erl(Dir, Steps) ->
    Parent = self(),
    Pid = spawn(fun() ->
                        process_flag(trap_exit, true),
                        Parent ! {self(), run_steps(Dir, Steps, #{}, 1)}
                end),
    receive {Pid, Results} -> {Pid, Results} end.

run_steps(_Dir, [], _Ports, _Next) ->
    [];
run_steps(Dir, [Step | Rest], Ports, Next) ->
    Result = try step(Dir, Step, Ports) catch error:R -> {error, R} end,
    Msgs = collect(),
    {Ports1, Next1} = case Step of
                          {open, _, _} -> {Ports#{Next => port_of(Result)}, Next + 1};
                          _ -> {Ports, Next}
                      end,
    [{Result, Msgs} | run_steps(Dir, Rest, Ports1, Next1)].

port_of({ok, Port}) -> Port;
port_of({error, _}) -> no_port.

step(Dir, {load, Name}, _) ->
    case erl_ddll:load_driver(Dir, Name) of
        ok -> {ok, ok};
        {error, {open_error, _}} -> {error, open_error};
        {error, R} -> {error, R}
    end;
step(_, {unload, Name}, _) ->
    case erl_ddll:unload_driver(Name) of
        ok -> {ok, ok};
        {error, R} -> {error, R}
    end;
step(_, {open, Command, Opts}, _) ->
    {ok, open_port({spawn_driver, Command}, Opts)};
step(_, {close, I}, Ports) ->
    {ok, port_close(port(I, Ports))};
step(_, {command, I, Data}, Ports) ->
    {ok, port_command(port(I, Ports), Data)};
step(_, {control, I, Op, Data}, Ports) ->
    {ok, port_control(port(I, Ports), Op, Data)};
step(_, {call, I, Op, Term}, Ports) ->
    {ok, erlang:port_call(port(I, Ports), Op, Term)}.

port(I, Ports) -> maps:get(I, Ports, no_port).

collect() ->
    receive M -> [M | collect()] after ?WAIT -> [] end.

%% ---- edrv ------------------------------------------------------------------

run_edrv(Runner, Dir, Steps) ->
    Port = open_port({spawn_executable, Runner},
                     [{args, [Dir]}, binary, {packet, 4}, exit_status]),
    port_command(Port, term_to_binary([for_runner(S) || S <- Steps])),
    receive
        {Port, {data, Bin}} ->
            receive {Port, {exit_status, 0}} -> binary_to_term(Bin);
                    {Port, {exit_status, N}} -> error({runner_exit_status, N})
            end;
        {Port, {exit_status, N}} ->
            error({runner_exit_status, N})
    after 60000 ->
            error(runner_timeout)
    end.

%% Names, commands and data as binaries, call terms in ETF. Command data that
%% is an iolist goes as the list of its pieces, for edrv_port_commandv.
for_runner({load, Name}) -> {load, bin(Name)};
for_runner({unload, Name}) -> {unload, bin(Name)};
for_runner({open, Command, Opts}) -> {open, bin(Command), Opts};
for_runner({close, I}) -> {close, I};
for_runner({command, I, Data}) when is_binary(Data) -> {command, I, Data};
for_runner({command, I, Data}) -> {command, I, pieces(Data)};
for_runner({control, I, Op, Data}) -> {control, I, Op, bin(Data)};
for_runner({call, I, Op, Term}) -> {call, I, Op, term_to_binary(Term)}.

bin(A) when is_atom(A) -> atom_to_binary(A);
bin(Data) -> iolist_to_binary(Data).

%% The pieces of an iolist: each binary as it is, each run of bytes as one.
pieces(IoList) -> merge(flat(IoList, [])).

flat([H | T], Acc) -> flat(H, flat(T, Acc));
flat([], Acc) -> Acc;
flat(X, Acc) -> [X | Acc].

merge([]) -> [];
merge([B | T]) when is_binary(B) -> [B | merge(T)];
merge(L) ->
    {Bytes, T} = lists:splitwith(fun is_integer/1, L),
    [list_to_binary(Bytes) | merge(T)].

%% ---- normalizing -------------------------------------------------------------

%% {Self, Results} -> Results with ports and pids replaced.
normalize({Self, Results}) ->
    {Norm, _} = norm(Results, Self, #{}),
    Norm.

norm(P, _Self, Ports) when is_port(P) ->
    case Ports of
        #{P := K} -> {{port, K}, Ports};
        _ -> K = map_size(Ports) + 1, {{port, K}, Ports#{P => K}}
    end;
norm(Self, Self, Ports) -> {self, Ports};
norm(P, _Self, Ports) when is_pid(P) -> {pid, Ports};
norm([H | T], Self, Ports) ->
    {H1, Ports1} = norm(H, Self, Ports),
    {T1, Ports2} = norm(T, Self, Ports1),
    {[H1 | T1], Ports2};
norm(T, Self, Ports) when is_tuple(T) ->
    {L, Ports1} = norm(tuple_to_list(T), Self, Ports),
    {list_to_tuple(L), Ports1};
norm(M, Self, Ports) when is_map(M) ->
    {L, Ports1} = norm(lists:sort(maps:to_list(M)), Self, Ports),
    {maps:from_list(L), Ports1};
norm(X, _Self, Ports) ->
    {X, Ports}.
