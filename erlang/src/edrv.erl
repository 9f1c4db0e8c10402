%% edrv: linked-in drivers hosted by an edrv node, used from a BEAM node.
%%
%% An edrv node (`edrv --node NAME`, docs/node.md) loads drivers and runs
%% their ports in its own OS process. This module mirrors erl_ddll and the
%% port BIFs for such ports: the port identifier that open_port/3 returns
%% is a real port of the edrv node, its messages come as {Port, {data, D}},
%% and its owner is linked to it as to a local port (an exit of the port
%% reaches the owner as {'EXIT', Port, Reason} when it traps exits, and ends
%% it otherwise unless the reason is normal; the loss of the node is
%% noconnection).
%%
%% How: requests go to the name `edrv` on the edrv node. Exit signals cannot
%% cross the distribution with a port as their sender, and a C node cannot
%% monitor a process, so each process that uses ports of an edrv node has a
%% helper process here (one per edrv node), which the edrv node links to:
%% the edrv node tells it of its process's ports and of their exits, which
%% it gives to its process as a local port's would come; when its process
%% dies, it exits with the same reason, and the edrv node, seeing that, ends
%% the process's ports as an owner's death does.
-module(edrv).

-export([load_driver/3, unload_driver/2, open_port/3,
         port_command/2, port_command/3, port_control/3, port_call/3,
         port_close/1, port_info/1, port_info/2, ping/1, format_error/1]).

%% The application: one process, which owns the table of busy ports, under
%% a supervisor (this module too).
-behaviour(application).
-behaviour(supervisor).
-export([start/2, stop/1, init/1, busy_start/0]).
-export([system_continue/3, system_terminate/4, system_code_change/4]).

-define(SERVER, edrv).
-define(BUSY, edrv_busy). % the table of busy ports, and its owner's name

%% ---- drivers ----------------------------------------------------------------

%% As erl_ddll:load_driver/2, on Node: Dir must be one of the node's
%% --drivers folders ({error, {not_allowed, Dir}} otherwise).
-spec load_driver(node(), file:filename(), atom() | string()) -> ok | {error, term()}.
load_driver(Node, Dir, Name) when is_atom(Node) ->
    case call(Node, {load_driver, text(Dir), text(Name)}, undefined) of
        {reply, badarg} -> erlang:error(badarg, [Node, Dir, Name]);
        {reply, Reply} -> Reply;
        {down, Reason} -> {error, Reason}
    end.

%% As erl_ddll:unload_driver/1, on Node.
-spec unload_driver(node(), atom() | string()) -> ok | {error, term()}.
unload_driver(Node, Name) when is_atom(Node) ->
    case call(Node, {unload_driver, text(Name)}, undefined) of
        {reply, badarg} -> erlang:error(badarg, [Node, Name]);
        {reply, Reply} -> Reply;
        {down, Reason} -> {error, Reason}
    end.

%% ---- ports --------------------------------------------------------------------

%% As open_port/2 with {spawn_driver, Command} (spawn is taken as
%% spawn_driver: an edrv node runs drivers, not programs). Options: binary,
%% eof, and the ones that do not apply to a driver port (stream, in, out,
%% hide, use_stdio, {parallelism, _}, {busy_limits_port, _},
%% {busy_limits_msgq, _}), which are ignored.
-spec open_port(node(), {spawn | spawn_driver, iodata() | atom()}, list()) -> port().
open_port(Node, {Kind, Command} = Name, Opts)
  when is_atom(Node), (Kind =:= spawn orelse Kind =:= spawn_driver), is_list(Opts) ->
    Flags = try port_flags(Opts, [])
            catch error:badarg -> erlang:error(badarg, [Node, Name, Opts])
            end,
    Cmd = try text(Command)
          catch error:badarg -> erlang:error(badarg, [Node, Name, Opts])
          end,
    case call(Node, {open_port, Cmd, Flags}) of
        {reply, {ok, Port}} -> Port;
        {reply, {error, Reason}} -> erlang:error(Reason, [Node, Name, Opts]);
        {reply, badarg} -> erlang:error(badarg, [Node, Name, Opts]);
        {down, _} -> erlang:error(badarg, [Node, Name, Opts])
    end;
open_port(Node, Name, Opts) ->
    erlang:error(badarg, [Node, Name, Opts]).

port_flags([], Acc) -> lists:usort(Acc);
port_flags([binary | T], Acc) -> port_flags(T, [binary | Acc]);
port_flags([eof | T], Acc) -> port_flags(T, [eof | Acc]);
port_flags([O | T], Acc) when O =:= stream; O =:= in; O =:= out; O =:= hide;
                             O =:= use_stdio ->
    port_flags(T, Acc);
port_flags([{O, _} | T], Acc) when O =:= parallelism; O =:= busy_limits_port;
                                  O =:= busy_limits_msgq ->
    port_flags(T, Acc);
port_flags(_, _) -> erlang:error(badarg).

%% As erlang:port_command/2: the data goes to the port asynchronously.
%% badarg for a port that this process knows is closed: one it owned that
%% exited, one it closed, one of a node it lost, one that another call of
%% its (port_control, port_call, port_command/3, port_info, port_close)
%% found closed or saw end (a driver_exit in a control). A port that has
%% closed without this process's knowing drops the data (it has to be asked
%% to know, and that would make every command wait for an answer).
-spec port_command(port(), iodata()) -> true.
port_command(Port, Data) when is_port(Port) ->
    Node = node(Port),
    {Helper, Closed} = helper(Node),
    case ets:member(Closed, Port) of
        false ->
            try erlang:iolist_size(Data)
            catch error:badarg -> erlang:error(badarg, [Port, Data])
            end,
            case busy(Port) of
                false ->
                    erlang:send({?SERVER, Node}, {'$edrv_cmd', Port, Data, Helper}),
                    true;
                true ->
                    %% as ERTS suspends the sender: the node answers once
                    %% the port has taken the data
                    case call(Node, {command, Port, Data, []}) of
                        {reply, Sent} when Sent =:= true; element(1, Sent) =:= true ->
                            sent(Port, Sent);
                        Other ->
                            badarg(Other, Port, [Port, Data])
                    end
            end;
        true ->
            erlang:error(badarg, [Port, Data])
    end;
port_command(Port, Data) ->
    erlang:error(badarg, [Port, Data]).

%% As erlang:port_command/3: waits for the node's answer. nosuspend gives
%% false when the port is busy.
-spec port_command(port(), iodata(), [force | nosuspend]) -> boolean().
port_command(Port, Data, Opts) when is_port(Port), is_list(Opts) ->
    _ = try erlang:iolist_size(Data)
        catch error:badarg -> erlang:error(badarg, [Port, Data, Opts])
        end,
    case call(node(Port), {command, Port, Data, Opts}) of
        {reply, Sent} when Sent =:= true; element(1, Sent) =:= true -> sent(Port, Sent);
        {reply, false} -> set_busy(Port, true), false;
        {reply, notsup} -> erlang:error(notsup, [Port, Data, Opts]);
        Other -> badarg(Other, Port, [Port, Data, Opts])
    end;
port_command(Port, Data, Opts) ->
    erlang:error(badarg, [Port, Data, Opts]).

%% As erlang:port_control/3.
-spec port_control(port(), integer(), iodata()) -> iodata().
port_control(Port, Op, Data) when is_port(Port), is_integer(Op), Op >= 0, Op < 1 bsl 32 ->
    reply(call(node(Port), {control, Port, Op, Data}), Port, [Port, Op, Data]);
port_control(Port, Op, Data) ->
    erlang:error(badarg, [Port, Op, Data]).

%% As erlang:port_call/3.
-spec port_call(port(), integer(), term()) -> term().
port_call(Port, Op, Term) when is_port(Port), is_integer(Op), Op >= 0, Op < 1 bsl 32 ->
    reply(call(node(Port), {call, Port, Op, Term}), Port, [Port, Op, Term]);
port_call(Port, Op, Term) ->
    erlang:error(badarg, [Port, Op, Term]).

%% As erlang:port_close/1.
-spec port_close(port()) -> true.
port_close(Port) when is_port(Port) ->
    case call(node(Port), {close, Port}) of
        {reply, true} -> known_closed(Port), true;
        Other -> badarg(Other, Port, [Port])
    end;
port_close(Port) ->
    erlang:error(badarg, [Port]).

%% As erlang:port_info/1: name, links, id, connected and os_pid.
-spec port_info(port()) -> [{atom(), term()}] | undefined.
port_info(Port) when is_port(Port) ->
    case call(node(Port), {info, Port}) of
        {reply, {ok, Info}} -> Info;
        {reply, undefined} -> known_closed(Port), undefined;
        {down, _} -> undefined;
        _ -> erlang:error(badarg, [Port])
    end;
port_info(Port) ->
    erlang:error(badarg, [Port]).

%% As erlang:port_info/2, for the items of port_info/1.
-spec port_info(port(), atom()) -> {atom(), term()} | undefined.
port_info(Port, Item) when is_port(Port), is_atom(Item) ->
    case call(node(Port), {info, Port, Item}) of
        {reply, {ok, Info}} -> Info;
        {reply, undefined} -> known_closed(Port), undefined;
        {down, _} -> undefined;
        _ -> erlang:error(badarg, [Port, Item])
    end;
port_info(Port, Item) ->
    erlang:error(badarg, [Port, Item]).

%% pong when Node is an edrv node that answers, pang otherwise.
-spec ping(node()) -> pong | pang.
ping(Node) when is_atom(Node) ->
    case call(Node, {ping}, undefined) of
        {reply, pong} -> pong;
        _ -> pang
    end.

%% As erl_ddll:format_error/1, for the errors of load_driver/3 and
%% unload_driver/2.
-spec format_error(term()) -> string().
format_error({open_error, Text}) when is_list(Text) -> Text;
format_error({not_allowed, Dir}) ->
    lists:flatten(io_lib:format("~ts is not one of the edrv node's --drivers folders", [Dir]));
format_error(noconnection) -> "the edrv node cannot be reached";
format_error(not_loaded) -> "Driver not loaded";
format_error(Reason) -> erl_ddll:format_error(Reason).

%% ---- inside ---------------------------------------------------------------------

%% A control's or call's answer: the reply, and what the port is after it.
reply({reply, {ok, Reply}}, Port, _) -> set_busy(Port, false), Reply;
reply({reply, {ok, Reply, busy}}, Port, _) -> set_busy(Port, true), Reply;
reply({reply, {ok, Reply, closed}}, Port, _) -> known_closed(Port), Reply;
reply(Other, Port, Args) -> badarg(Other, Port, Args).

%% A command the port took: true ({true, busy} when it is busy after it).
sent(Port, true) -> set_busy(Port, false), true;
sent(Port, {true, busy}) -> set_busy(Port, true), true.

%% ---- busy ports -------------------------------------------------------------------
%% The ports of edrv nodes that this node believes busy, in a public table
%% that the application's process owns (started at the first use). Every
%% answer about a port updates it before the caller returns; the edrv node
%% tells the owner ({'$edrv_busy', Port, Busy}) when a port_command/2 cast
%% finds the state changed. port_command/2 casts to a port that is not in
%% the table, and waits for the node's answer for one that is: a busy port
%% suspends the sender, as in ERTS. A port made busy by its driver without
%% a request of this node in between is seen at the first cast after it;
%% one made free so is seen at the next command, which goes through at once.

busy(Port) ->
    try ets:member(?BUSY, Port)
    catch error:badarg -> ensure_started(), false
    end.

set_busy(Port, Busy) ->
    try busy_update(Port, Busy)
    catch error:badarg ->
            ensure_started(),
            %% without the application (its .app not in the code path) no
            %% table: busy ports do not suspend senders then
            try busy_update(Port, Busy) catch error:badarg -> true end
    end.

busy_update(Port, true) -> ets:insert(?BUSY, {Port});
busy_update(Port, false) -> ets:delete(?BUSY, Port).

%% Once: without edrv.app in the code path it cannot start, and asking
%% again at every command would search the code path each time.
ensure_started() ->
    case persistent_term:get({?MODULE, no_app}, false) of
        true ->
            ok;
        false ->
            case application:ensure_all_started(edrv) of
                {ok, _} -> ok;
                {error, _} -> persistent_term:put({?MODULE, no_app}, true)
            end
    end.

%% application callbacks: the table's owner, under a supervisor.
start(_Type, _Args) ->
    supervisor:start_link({local, edrv_sup}, ?MODULE, sup).

stop(_State) -> ok.

%% supervisor callback (this module is the application's supervisor too)
init(sup) ->
    {ok, {#{strategy => one_for_one},
          [#{id => ?BUSY, start => {?MODULE, busy_start, []}}]}}.

busy_start() ->
    proc_lib:start_link(erlang, apply, [fun busy_init/1, [self()]]).

busy_init(Parent) ->
    register(?BUSY, self()),
    ?BUSY = ets:new(?BUSY, [named_table, public, set, {read_concurrency, true}]),
    proc_lib:init_ack(Parent, {ok, self()}),
    busy_loop(Parent).

busy_loop(Parent) ->
    receive
        {'$edrv_busy', Port, Busy} when is_port(Port), is_boolean(Busy) ->
            busy_update(Port, Busy),
            busy_loop(Parent);
        {system, From, Request} -> % sys and the release handler
            sys:handle_system_msg(Request, From, Parent, ?MODULE, [], Parent);
        {'EXIT', Parent, Reason} ->
            exit(Reason);
        _ ->
            busy_loop(Parent)
    end.

system_continue(Parent, _Debug, _State) -> busy_loop(Parent).
system_terminate(Reason, _Parent, _Debug, _State) -> exit(Reason).
system_code_change(State, _Module, _OldVsn, _Extra) -> {ok, State}.

%% ---- inside, continued ------------------------------------------------------------

%% A request's failure as ERTS raises it: badarg. A port the node says is
%% closed is remembered as such (see port_command/2).
badarg({reply, closed}, Port, Args) ->
    known_closed(Port),
    erlang:error(badarg, Args);
badarg(_, _, Args) ->
    erlang:error(badarg, Args).

known_closed(Port) ->
    {_, Closed} = helper(node(Port)),
    ets:insert(Closed, {Port}),
    set_busy(Port, false).

text(T) when is_atom(T) -> atom_to_binary(T, utf8);
text(T) when is_binary(T) -> T;
text(T) when is_list(T) ->
    case unicode:characters_to_binary(T) of
        B when is_binary(B) -> B;
        _ -> erlang:error(badarg)
    end;
text(_) -> erlang:error(badarg).

%% A request and its answer. The monitor ends the wait if the node goes
%% away (reason noconnection). The node must be connected first: a monitor
%% made while the connection to a C node is being set up ends it (OTP 25:
%% the monitor was encoded for a node that supports them, and a C node does
%% not).
call(Node, Request) ->
    case connected(Node) of
        true -> call(Node, Request, element(1, helper(Node)));
        false -> {down, noconnection}
    end.

call(Node, Request, Helper) ->
    case connected(Node) of
        true -> call_connected(Node, Request, Helper);
        false -> {down, noconnection}
    end.

connected(Node) ->
    lists:member(Node, nodes(hidden)) orelse net_kernel:connect_node(Node) =:= true.

call_connected(Node, Request, Helper) ->
    Server = {?SERVER, Node},
    Mref = erlang:monitor(process, Server),
    erlang:send(Server, {'$edrv', Mref, Request, Helper}),
    receive
        {Mref, Reply} ->
            erlang:demonitor(Mref, [flush]),
            {reply, Reply};
        {'DOWN', Mref, _, _, Reason} ->
            {down, Reason}
    end.

%% The calling process's helper for Node, made when it has none alive, and
%% the table of the ports of that node that it knows are closed (the
%% helper fills it as their exits come; port_close too). The table is the
%% calling process's: it goes with it.
helper(Node) ->
    Key = {'$edrv_helper', Node},
    case get(Key) of
        {H, _} = HC ->
            case is_process_alive(H) of
                true -> HC;
                false -> new_helper(Key, Node)
            end;
        _ -> new_helper(Key, Node)
    end.

new_helper(Key, Node) ->
    Owner = self(),
    Closed = case get('$edrv_closed') of
                 undefined ->
                     T = ets:new(edrv_closed_ports, [set, public]),
                     put('$edrv_closed', T),
                     T;
                 T ->
                     T
             end,
    H = spawn(fun() -> helper_init(Owner, Node, Closed) end),
    put(Key, {H, Closed}),
    {H, Closed}.

%% The helper watches its process (a monitor) and the node (a link from the
%% node's pid, and monitor_node for the time before the link is made). The
%% edrv node sends it {'$edrv_port', Port} when its process opens a port
%% there, {'EXIT', Port, Reason} (a message) when that port exits, and the
%% messages for its process that follow such an exit (see ack/1).
helper_init(Owner, Node, Closed) ->
    process_flag(trap_exit, true),
    process_flag(priority, high),
    Mref = erlang:monitor(process, Owner),
    monitor_node(Node, true),
    helper_loop(Owner, Mref, Node, Closed, #{}).

helper_loop(Owner, Mref, Node, Closed, Ports) ->
    receive
        {'$edrv_port', Port} ->
            %% (a port that exited at once has its exit here first)
            Known = try ets:member(Closed, Port) catch error:badarg -> true end,
            helper_loop(Owner, Mref, Node, Closed,
                        case Known of true -> Ports; false -> Ports#{Port => true} end);
        {'EXIT', Port, Reason} when is_port(Port) ->
            closed(Closed, [Port]),
            exit_to(Owner, Port, Reason),
            ack(Node),
            helper_loop(Owner, Mref, Node, Closed, maps:remove(Port, Ports));
        {'$edrv_relay', Msg} ->
            Owner ! Msg,
            ack(Node),
            helper_loop(Owner, Mref, Node, Closed, Ports);
        {'DOWN', Mref, process, Owner, Reason} ->
            %% the edrv node, linked to us, ends its ports with that reason
            exit(Reason);
        {'EXIT', Pid, _} when is_pid(Pid), node(Pid) =:= Node ->
            node_lost(Owner, Closed, Ports);
        {nodedown, Node} ->
            node_lost(Owner, Closed, Ports);
        {'EXIT', _, _} ->
            helper_loop(Owner, Mref, Node, Closed, Ports)
    end.

%% Tells the node that what it sent us has reached our process: it sends
%% the messages that follow a port's exit through us (as {'$edrv_relay',
%% Msg}) until then, so that they cannot overtake the exit.
ack(Node) ->
    erlang:send({?SERVER, Node}, {'$edrv_ack', 1}).

%% Every port of the lost node exits with noconnection.
node_lost(Owner, Closed, Ports) ->
    closed(Closed, maps:keys(Ports)),
    [exit_to(Owner, Port, noconnection) || Port <- maps:keys(Ports)],
    exit(normal).

%% The table goes with its process, which may have ended meanwhile. A
%% closed port leaves the table of busy ports.
closed(Closed, Ports) ->
    [try ets:delete(?BUSY, Port) catch error:badarg -> true end || Port <- Ports],
    try ets:insert(Closed, [{Port} || Port <- Ports])
    catch error:badarg -> ok
    end.

%% An exit signal from Port, as the owner would get it from a local port.
exit_to(Owner, Port, Reason) ->
    case erlang:process_info(Owner, trap_exit) of
        {trap_exit, true} ->
            Owner ! {'EXIT', Port, Reason};
        {trap_exit, false} when Reason =:= kill ->
            %% a linked process's exit with reason kill ends it with kill
            %% (exit/2 would give killed)
            link(Owner),
            exit(kill);
        {trap_exit, false} when Reason =/= normal ->
            exit(Owner, Reason);
        _ ->
            ok
    end.
