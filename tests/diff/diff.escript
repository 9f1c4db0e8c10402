#!/usr/bin/env escript
%%! +A 2 +S 1
%% diff.escript: runs one scenario in erl and in edrv and compares them.
%%
%% Usage: escript diff.escript DIFF_RUNNER DRIVERS_DIR SCENARIO
%%
%% A scenario (read with file:consult/1) is a list of steps:
%%   {load, Name}  {unload, Name}  {open, Command, Opts}  {close, Idx}
%%   {command, Idx, Data}  {control, Idx, Op, Data}  {call, Idx, Op, Term}
%%   {sleep, Ms}  {msg_wait, Ms}
%% load and unload are erl_ddll:load_driver/2 and unload_driver/1 in erl
%% (unload_driver waits until the driver is really gone, i.e. until its async
%% jobs have ended; diff_runner waits the same way). sleep waits Ms ms and
%% gives {ok, ok}. Every open step takes the next port index (1, 2, ...),
%% failed or not. Each step gives {ok, Value} or {error, Reason}, then the
%% messages that arrive within 50 ms of the step's end or of each other
%% ({msg_wait, Ms} sets that time from its own step on, and gives {ok, ok};
%% messages from pool threads need more on a loaded machine). Here the steps
%% run in a fresh process that traps exits; diff_runner runs them in edrv.
%% Ports become {port, K} (K by first appearance), the running process's pid
%% `self`, other pids `pid`; then the two runs must be equal step by step.
%% Exit status 0 when they are. With DIFF_VERBOSE set, the steps that match
%% are printed too.
%%
%% The async pool: both sides have 2 pool threads (+A 2 above; diff_runner
%% starts edrv with async_threads = 2). erl runs one scheduler (+S 1), as
%% edrv has one emulator thread: ERTS queues a finished job for the scheduler
%% that submitted it, so with several schedulers the jobs of one lane that
%% were submitted from different schedulers (the scenario's process may move
%% between steps) could reach ready_async out of lane order, which is ERTS's
%% nondeterminism, not a difference. For ports of the async test driver
%% adrv (tests/drivers/adrv.c) two more things are normalized:
%%  - The job ids in control replies, which come from a counter that is
%%    global in each VM: SUBMIT's "Id,KeyAfter" becomes {submitted, KeyAfter}
%%    (KeyAfter, which ERTS sets to *key rem 2, must match), BLOCK's "Id"
%%    becomes blocked.
%%  - The {done, Key, Seq, InvokeOrder, Lane} messages. Jobs on different
%%    lanes (pool threads) end in any relative order, jobs on one lane in
%%    order. So within a step, the done messages are grouped by lane, the
%%    groups ordered by their smallest {Seq, Key, InvokeOrder}, each keeping
%%    its arrival order, and put back into the places that done messages took
%%    among the step's messages. Then each lane name becomes {lane, K}, K by
%%    first appearance in the scenario, so the pattern of keys to lanes must
%%    match but not the thread names. BLOCK jobs name no lane ([]): each of
%%    their messages is a group of its own, and [] stays.
%%    This keeps every per-lane (and so per-key) order of ready_async and
%%    drops only the interleaving of lanes. Scenarios must still avoid what
%%    is nondeterministic in itself: InvokeOrder counts invokes per key
%%    field, so jobs with no key (which alternate lanes by job id) should not
%%    share a key field with concurrently running jobs; and every message
%%    must come within the wait (msg_wait) of the step or the last message,
%%    so slow jobs end in a {sleep, Ms} step of their own.
-mode(compile).

-define(WAIT, 50).

main([Runner, Dir, Scenario]) ->
    {ok, Steps} = file:consult(Scenario),
    Name = filename:basename(Scenario, ".scenario"),
    Erl = normalize(Steps, run_erl(Dir, Steps)),
    Edrv = normalize(Steps, run_edrv(Runner, Dir, Steps)),
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
    {ok, erlang:port_call(port(I, Ports), Op, Term)};
step(_, {sleep, Ms}, _) ->
    timer:sleep(Ms),
    {ok, ok};
step(_, {msg_wait, Ms}, _) when is_integer(Ms), Ms > 0 ->
    put(msg_wait, Ms), % this step's messages too, as in diff_runner
    {ok, ok}.

port(I, Ports) -> maps:get(I, Ports, no_port).

collect() ->
    Wait = case get(msg_wait) of undefined -> ?WAIT; Ms -> Ms end,
    receive M -> [M | collect()] after Wait -> [] end.

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
for_runner({call, I, Op, Term}) -> {call, I, Op, term_to_binary(Term)};
for_runner({sleep, Ms}) -> {sleep, Ms};
for_runner({msg_wait, Ms}) -> {msg_wait, Ms}.

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

%% {Self, Results} -> Results with ports and pids replaced, then adrv's job
%% ids and lanes (see the top of the file).
normalize(Steps, {Self, Results}) ->
    {Norm, _} = norm(Results, Self, #{}),
    async_norm(Steps, Norm, adrv_ports(Steps, 1), #{}).

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

%% ---- normalizing the async pool (adrv) -----------------------------------------

%% The indices of the ports opened on adrv.
adrv_ports([], _) -> [];
adrv_ports([{open, Command, _} | Rest], I) ->
    case string:lexemes(bin(Command), " ") of
        [<<"adrv">> | _] -> [I | adrv_ports(Rest, I + 1)];
        _ -> adrv_ports(Rest, I + 1)
    end;
adrv_ports([_ | Rest], I) -> adrv_ports(Rest, I).

async_norm([], [], _Adrv, _Lanes) ->
    [];
async_norm([Step | Steps], [{Result, Msgs} | Results], Adrv, Lanes) ->
    {Msgs1, Lanes1} = lanes(order_done(Msgs), Lanes),
    [{reply(Step, Result, Adrv), Msgs1} | async_norm(Steps, Results, Adrv, Lanes1)].

%% SUBMIT (1) and BLOCK (3) replies without the job id.
reply({control, I, Op, _}, {ok, Reply}, Adrv) when Op =:= 1; Op =:= 3 ->
    case {lists:member(I, Adrv), Op, string:split(Reply, ",")} of
        {true, 1, [_Id, KeyAfter]} -> {ok, {submitted, KeyAfter}};
        {true, 3, [_Id]} -> {ok, blocked};
        _ -> {ok, Reply}
    end;
reply(_, Result, _) ->
    Result.

is_done({done, _, _, _, _}) -> true;
is_done(_) -> false.

%% The done messages grouped by lane, into the places done messages took.
order_done(Msgs) ->
    Done = [M || M <- Msgs, is_done(M)],
    Groups = [{lists:min([{S, K, O} || {done, K, S, O, _} <- G]), G}
              || G <- group_by_lane(Done)],
    put_back(Msgs, lists:append([G || {_, G} <- lists:sort(Groups)])).

group_by_lane([]) ->
    [];
group_by_lane([{done, _, _, _, []} = M | Done]) ->
    [[M] | group_by_lane(Done)]; % BLOCK jobs: no lane, each on its own
group_by_lane([{done, _, _, _, Lane} | _] = Done) ->
    {Same, Other} = lists:partition(fun({done, _, _, _, L}) -> L =:= Lane end, Done),
    [Same | group_by_lane(Other)].

put_back([], []) -> [];
put_back([M | Msgs], Done) ->
    case is_done(M) of
        true -> [hd(Done) | put_back(Msgs, tl(Done))];
        false -> [M | put_back(Msgs, Done)]
    end.

%% Lane names to {lane, K}, K by first appearance.
lanes([], Lanes) ->
    {[], Lanes};
lanes([{done, K, S, O, Lane} | Msgs], Lanes) when Lane =/= [] ->
    {L, Lanes1} = case Lanes of
                      #{Lane := L0} -> {L0, Lanes};
                      _ -> L0 = {lane, map_size(Lanes) + 1}, {L0, Lanes#{Lane => L0}}
                  end,
    {Msgs1, Lanes2} = lanes(Msgs, Lanes1),
    {[{done, K, S, O, L} | Msgs1], Lanes2};
lanes([M | Msgs], Lanes) ->
    {Msgs1, Lanes1} = lanes(Msgs, Lanes),
    {[M | Msgs1], Lanes1}.
