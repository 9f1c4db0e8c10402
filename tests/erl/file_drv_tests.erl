%% EUnit tests of examples/file_drv.c in real erl (run with async threads,
%% erl +A 2). The drivers' directory is in the environment variable
%% EDRV_DRIVERS (see example_drivers_run). Each test opens its own port and
%% works in its own temporary directory, removed afterwards.
-module(file_drv_tests).
-include_lib("eunit/include/eunit.hrl").

-define(OPEN, 1).
-define(READ, 2).
-define(WRITE, 3).
-define(FSYNC, 4).
-define(CLOSE, 5).
-define(SHA256, 6).
-define(LISTDIR, 7).
-define(POSITION, 8).
-define(LSTAT, 9).
-define(SHA256S, 10).

-define(RD, 1).
-define(WR, 2).
-define(CREATE, 4).
-define(TRUNC, 8).
-define(APPEND, 16).
-define(EXCL, 32).

%% How long a test waits for what must come (a reply, a closed fd): a bound
%% for a broken build, never a timing; and EUnit's bound for a whole test.
-define(TIMEOUT, 30000).
-define(TEST_BOUND_S, 60).

%% ---- helpers ----------------------------------------------------------------

port() ->
    Dir = os:getenv("EDRV_DRIVERS"),
    ?assertNotEqual(false, Dir),
    ok = erl_ddll:load_driver(Dir, "file_drv"),
    open_port({spawn_driver, "file_drv"}, [binary]).

%% Runs Fun(Port, Dir) with a new port and a new temporary directory.
with(Fun) ->
    flush(),
    Dir = tmpdir(),
    P = port(),
    try
        Fun(P, Dir)
    after
        catch port_close(P),
        flush(),
        ok = file:del_dir_r(Dir)
    end.

tmpdir() ->
    Base = case os:getenv("TMPDIR") of
               false -> "/tmp";
               "" -> "/tmp";
               T -> T
           end,
    Dir = filename:join(Base, unique_name()),
    ok = file:make_dir(Dir),
    Dir.

unique_name() ->
    lists:flatten(io_lib:format("file_drv_tests.~s.~b",
                                [os:getpid(), erlang:unique_integer([positive])])).

%% Results carry no port: drop those of earlier tests.
flush() ->
    receive
        {file_drv, _, _} -> flush()
    after 0 ->
        ok
    end.

path(Dir, Name) ->
    iolist_to_binary(filename:join(Dir, Name)).

%% Sends a request; gives its Ref.
req(P, Op, Data) ->
    <<Ref:32>> = port_control(P, Op, Data),
    Ref.

%% Sends an OPEN; gives {Ref, Fd}.
open_req(P, Flags, Path) ->
    <<Ref:32, Fd:32>> = port_control(P, ?OPEN, [Flags, Path]),
    {Ref, Fd}.

result(Ref) ->
    receive
        {file_drv, Ref, R} -> R
    after ?TIMEOUT ->
        error({no_result, Ref})
    end.

call(P, Op, Data) ->
    result(req(P, Op, Data)).

%% Opens and waits: gives Fd once the open succeeded.
open(P, Flags, Path) ->
    {Ref, Fd} = open_req(P, Flags, Path),
    ?assertEqual(ok, result(Ref)),
    Fd.

read(P, Fd, N) -> call(P, ?READ, <<Fd:32, N:32>>).
write(P, Fd, Data) -> call(P, ?WRITE, [<<Fd:32>>, Data]).
fsync(P, Fd) -> call(P, ?FSYNC, <<Fd:32>>).
close(P, Fd) -> call(P, ?CLOSE, <<Fd:32>>).
sha256(P, Fd) -> call(P, ?SHA256, <<Fd:32>>).
listdir(P, Path) -> call(P, ?LISTDIR, Path).
position(P, Fd, Off) -> call(P, ?POSITION, <<Fd:32, Off:64/signed>>).

%% Reads until eof; gives all the bytes.
read_all(P, Fd, Chunk) ->
    read_all(P, Fd, Chunk, []).
read_all(P, Fd, Chunk, Acc) ->
    case read(P, Fd, Chunk) of
        {ok, B} -> read_all(P, Fd, Chunk, [Acc, B]);
        eof -> iolist_to_binary(Acc)
    end.

%% The reference digest: crypto when it is installed, sha256sum otherwise.
reference_sha256(Path, Content) ->
    try
        crypto:hash(sha256, Content)
    catch
        error:undef ->
            Out = os:cmd("sha256sum '" ++ binary_to_list(Path) ++ "'"),
            binary:decode_hex(list_to_binary(lists:sublist(Out, 64)))
    end.

%% A deterministic pattern of N bytes.
pattern(N) ->
    Block = list_to_binary([I rem 251 || I <- lists:seq(0, 250)]),
    binary:part(binary:copy(Block, N div 251 + 1), 0, N).

%% The descriptors of this OS process (erl) open on files under Dir.
fds_under(Dir) ->
    Tag = filename:basename(Dir),
    {ok, Names} = file:list_dir("/proc/self/fd"),
    [T || N <- Names,
          {ok, T} <- [file:read_link(filename:join("/proc/self/fd", N))],
          string:find(T, Tag) =/= nomatch].

wait_until(Fun, Ms) when Ms =< 0 ->
    ?assert(Fun());
wait_until(Fun, Ms) ->
    case Fun() of
        true -> ok;
        false ->
            timer:sleep(10),
            wait_until(Fun, Ms - 10)
    end.

%% ---- tests ---------------------------------------------------------------------

%% Every test, each with a bound for a broken build (EUnit's own default is
%% 5 s a test, which a loaded machine or a sanitizer build can reach).
all_test_() ->
    [{Name, {timeout, ?TEST_BOUND_S, Fun}} || {Name, Fun} <- [
      {"reply_format", fun reply_format/0},
      {"write_then_read", fun write_then_read/0},
      {"queued_after_open", fun queued_after_open/0},
      {"read_size_larger_than_file", fun read_size_larger_than_file/0},
      {"read_proc_file", fun read_proc_file/0},
      {"many_files", fun many_files/0},
      {"position", fun position/0},
      {"append_and_truncate", fun append_and_truncate/0},
      {"sha256", fun sha256/0},
      {"listdir", fun listdir/0},
      {"errors", fun errors/0},
      {"badarg", fun badarg/0},
      {"per_file_order", fun per_file_order/0},
      {"port_close_closes_files", fun port_close_closes_files/0},
      {"owner_exit_closes_files", fun owner_exit_closes_files/0},
      {"lstat", fun lstat/0},
      {"sha256s", fun sha256s/0}
    ]].

%% Control replies: Ref counts from 1 per port, handles from 1, never reused.
reply_format() ->
    with(fun(P, Dir) ->
        F = path(Dir, "a"),
        ?assertEqual(<<1:32, 1:32>>, port_control(P, ?OPEN, [?WR bor ?CREATE, F])),
        ?assertEqual(ok, result(1)),
        ?assertEqual(<<2:32>>, port_control(P, ?CLOSE, <<1:32>>)),
        ?assertEqual(ok, result(2)),
        ?assertEqual(<<3:32, 2:32>>, port_control(P, ?OPEN, [?RD, F])),
        ?assertEqual(ok, result(3)),
        ?assertEqual(<<4:32>>, port_control(P, ?READ, <<2:32, 10:32>>)),
        ?assertEqual(eof, result(4)),
        ?assertEqual(<<5:32>>, port_control(P, ?LISTDIR, Dir)),
        ?assertEqual({ok, [{<<"a">>, regular}]}, result(5)),
        %% A second port counts for itself.
        P2 = port(),
        try
            ?assertEqual(<<1:32, 1:32>>, port_control(P2, ?OPEN, [?RD, F])),
            ?assertEqual(ok, result(1)),
            %% Handle 2 belongs to the first port.
            ?assertEqual(<<2:32>>, port_control(P2, ?READ, <<2:32, 1:32>>)),
            ?assertEqual({error, ebadf}, result(2))
        after
            port_close(P2)
        end
    end).

write_then_read() ->
    with(fun(P, Dir) ->
        F = path(Dir, "data"),
        W = open(P, ?WR bor ?CREATE bor ?TRUNC, F),
        ?assertEqual(ok, write(P, W, <<"hello ">>)),
        ?assertEqual(ok, write(P, W, ["wor", <<"ld">>])),
        ?assertEqual(ok, write(P, W, <<>>)),
        ?assertEqual(ok, fsync(P, W)),
        ?assertEqual(ok, close(P, W)),
        ?assertEqual({ok, <<"hello world">>}, file:read_file(F)),
        R = open(P, ?RD, F),
        ?assertNotEqual(W, R),
        ?assertEqual({ok, <<"hello">>}, read(P, R, 5)),
        ?assertEqual({ok, <<>>}, read(P, R, 0)),
        ?assertEqual({ok, <<" world">>}, read(P, R, 100)),
        ?assertEqual(eof, read(P, R, 100)),
        ?assertEqual(eof, read(P, R, 1)),
        ?assertEqual(ok, close(P, R)),
        %% In small pieces.
        R2 = open(P, ?RD, F),
        ?assertEqual(<<"hello world">>, read_all(P, R2, 3)),
        ?assertEqual(ok, close(P, R2))
    end).

%% Operations can follow the open at once, before it has finished.
queued_after_open() ->
    with(fun(P, Dir) ->
        F = path(Dir, "q"),
        {R1, Fd} = open_req(P, ?RD bor ?WR bor ?CREATE, F),
        R2 = req(P, ?WRITE, <<Fd:32, "queued">>),
        R3 = req(P, ?POSITION, <<Fd:32, 0:64>>),
        R4 = req(P, ?READ, <<Fd:32, 100:32>>),
        R5 = req(P, ?CLOSE, <<Fd:32>>),
        R6 = req(P, ?READ, <<Fd:32, 100:32>>),
        ?assertEqual([ok, ok, {ok, 0}, {ok, <<"queued">>}, ok, {error, ebadf}],
                     [result(R) || R <- [R1, R2, R3, R4, R5, R6]])
    end).

%% A big Size on a small file reads what there is.
read_size_larger_than_file() ->
    with(fun(P, Dir) ->
        F = path(Dir, "small"),
        ok = file:write_file(F, <<"tiny">>),
        Fd = open(P, ?RD, F),
        ?assertEqual({ok, <<"tiny">>}, read(P, Fd, 16#FFFFFFFF)),
        ?assertEqual(eof, read(P, Fd, 16#FFFFFFFF)),
        %% The file grows: the next read sees it.
        ok = file:write_file(F, <<"more">>, [append]),
        ?assertEqual({ok, <<"more">>}, read(P, Fd, 16#FFFFFFFF)),
        ?assertEqual(ok, close(P, Fd)),
        %% Bigger than the 64 KiB the driver starts with.
        Big = pattern(1000000),
        ok = file:write_file(F, Big),
        B = open(P, ?RD, F),
        ?assertEqual({ok, binary:part(Big, 0, 100000)}, read(P, B, 100000)),
        ?assertEqual({ok, binary:part(Big, 100000, 900000)}, read(P, B, 16#FFFFFFFF)),
        ?assertEqual(eof, read(P, B, 16#FFFFFFFF)),
        ?assertEqual(ok, close(P, B))
    end).

%% Files in /proc say they are empty; one read still gives them whole, also
%% past the 64 KiB the driver starts with (erl's smaps is about 100 KiB).
read_proc_file() ->
    with(fun(P, _Dir) ->
        S = open(P, ?RD, <<"/proc/self/status">>),
        {ok, Status} = read(P, S, 16#FFFFFFFF),
        ?assertMatch(<<"Name:", _/binary>>, Status),
        ?assertEqual($\n, binary:last(Status)),
        ?assertEqual(eof, read(P, S, 16#FFFFFFFF)),
        ?assertEqual(ok, close(P, S)),
        M = open(P, ?RD, <<"/proc/self/smaps">>),
        {ok, Smaps} = read(P, M, 16#FFFFFFFF),
        ?assertEqual($\n, binary:last(Smaps)),
        ?assertEqual(eof, read(P, M, 16#FFFFFFFF)),
        ?assertEqual(ok, close(P, M))
    end).

%% Many files on one port: the handle table grows, and removals in any order
%% leave every other handle valid.
many_files() ->
    with(fun(P, Dir) ->
        N = 200,
        Fds = [open(P, ?RD bor ?WR bor ?CREATE, path(Dir, integer_to_list(I)))
               || I <- lists:seq(1, N)],
        ?assertEqual(lists:seq(1, N), Fds),
        Closed = [Fd || Fd <- Fds, Fd rem 3 =:= 0 orelse Fd rem 7 =:= 0],
        [?assertEqual(ok, close(P, Fd)) || Fd <- lists:reverse(Closed)],
        Expect = fun(Fd) ->
                     case lists:member(Fd, Closed) of
                         true -> {error, ebadf};
                         false -> {ok, Fd}
                     end
                 end,
        [?assertEqual(Expect(Fd), position(P, Fd, Fd)) || Fd <- Fds],
        Rest = Fds -- Closed,
        [?assertEqual(ok, close(P, Fd)) || Fd <- Rest],
        [?assertEqual({error, ebadf}, position(P, Fd, 0)) || Fd <- Fds],
        ?assertEqual(N + 1, open(P, ?RD, path(Dir, "1")))
    end).

position() ->
    with(fun(P, Dir) ->
        F = path(Dir, "pos"),
        Content = pattern(100),
        ok = file:write_file(F, Content),
        Fd = open(P, ?RD bor ?WR, F),
        ?assertEqual({ok, 10}, position(P, Fd, 10)),
        ?assertEqual({ok, binary:part(Content, 10, 5)}, read(P, Fd, 5)),
        ?assertEqual({ok, 99}, position(P, Fd, 99)),
        ?assertEqual({ok, binary:part(Content, 99, 1)}, read(P, Fd, 5)),
        ?assertEqual(eof, read(P, Fd, 5)),
        ?assertEqual({ok, 0}, position(P, Fd, 0)),
        ?assertEqual({ok, Content}, read(P, Fd, 1000)),
        %% Past the end: allowed; a write there leaves a hole.
        ?assertEqual({ok, 5000000000}, position(P, Fd, 5000000000)),
        ?assertEqual(eof, read(P, Fd, 5)),
        ?assertEqual({ok, 200}, position(P, Fd, 200)),
        ?assertEqual(ok, write(P, Fd, <<"x">>)),
        ?assertEqual({error, einval}, position(P, Fd, -1)),
        ?assertEqual(ok, close(P, Fd)),
        {ok, After} = file:read_file(F),
        ?assertEqual(201, byte_size(After)),
        ?assertEqual(<<Content/binary, 0:(100 * 8), "x">>, After)
    end).

append_and_truncate() ->
    with(fun(P, Dir) ->
        F = path(Dir, "log"),
        ok = file:write_file(F, <<"ab">>),
        A = open(P, ?APPEND, F),
        %% Append writes at the end whatever the position.
        ?assertEqual({ok, 0}, position(P, A, 0)),
        ?assertEqual(ok, write(P, A, <<"cd">>)),
        ?assertEqual(ok, close(P, A)),
        ?assertEqual({ok, <<"abcd">>}, file:read_file(F)),
        %% Without truncate the content stays; with it, it goes.
        W = open(P, ?WR, F),
        ?assertEqual(ok, write(P, W, <<"X">>)),
        ?assertEqual(ok, close(P, W)),
        ?assertEqual({ok, <<"Xbcd">>}, file:read_file(F)),
        T = open(P, ?WR bor ?TRUNC, F),
        ?assertEqual(ok, close(P, T)),
        ?assertEqual({ok, <<>>}, file:read_file(F)),
        %% Exclusive creates, and fails on an existing file.
        E = path(Dir, "excl"),
        X = open(P, ?WR bor ?EXCL, E),
        ?assertEqual(ok, close(P, X)),
        ?assertEqual({error, eexist}, result(element(1, open_req(P, ?WR bor ?EXCL, E))))
    end).

%% LSTAT: the type of the path itself, a symbolic link not followed.
lstat() ->
    with(fun(P, Dir) ->
        F = path(Dir, "f"),
        ok = file:write_file(F, <<"x">>),
        L = path(Dir, "l"),
        ok = file:make_symlink("f", L),
        ?assertEqual({ok, regular}, call(P, ?LSTAT, F)),
        ?assertEqual({ok, directory}, call(P, ?LSTAT, Dir)),
        ?assertEqual({ok, symlink}, call(P, ?LSTAT, L)),
        ?assertEqual({ok, other}, call(P, ?LSTAT, <<"/dev/null">>)),
        ?assertEqual({error, enoent}, call(P, ?LSTAT, path(Dir, "none"))),
        ?assertError(badarg, port_control(P, ?LSTAT, <<"a", 0, "b">>))
    end).

%% SHA256S: whole files by name, in one request, each its digest or error,
%% in order; devices and FIFOs are not read.
sha256s() ->
    with(fun(P, Dir) ->
        A = path(Dir, "a"), B = path(Dir, "b"), E = path(Dir, "empty"),
        CA = pattern(600000), CB = <<"bee">>,
        ok = file:write_file(A, CA),
        ok = file:write_file(B, CB),
        ok = file:write_file(E, <<>>),
        Paths = [A, path(Dir, "none"), Dir, <<"/dev/zero">>, B, E, A],
        ?assertEqual({ok, [reference_sha256(A, CA), {error, enoent}, {error, eisdir},
                           {error, einval}, reference_sha256(B, CB),
                           reference_sha256(E, <<>>), reference_sha256(A, CA)]},
                     call(P, ?SHA256S, lists:join(<<0>>, Paths))),
        ?assertEqual({ok, [reference_sha256(B, CB)]}, call(P, ?SHA256S, B)),
        [?assertError(badarg, port_control(P, ?SHA256S, Bad))
         || Bad <- [<<>>, <<0>>, <<"a", 0>>, <<0, "a">>, <<"a", 0, 0, "b">>]]
    end).

sha256() ->
    with(fun(P, Dir) ->
        F = path(Dir, "big"),
        %% Several 256 KiB chunks and a partial one.
        Content = pattern(3 * 256 * 1024 + 12345),
        ok = file:write_file(F, Content),
        Fd = open(P, ?RD, F),
        ?assertEqual({ok, reference_sha256(F, Content)}, sha256(P, Fd)),
        %% It read to the end.
        ?assertEqual(eof, read(P, Fd, 1)),
        ?assertEqual({ok, sha256_of_nothing()}, sha256(P, Fd)),
        %% From the current position.
        ?assertEqual({ok, 1000}, position(P, Fd, 1000)),
        Rest = binary:part(Content, 1000, byte_size(Content) - 1000),
        RestFile = path(Dir, "rest"),
        ok = file:write_file(RestFile, Rest),
        ?assertEqual({ok, reference_sha256(RestFile, Rest)}, sha256(P, Fd)),
        ?assertEqual(ok, close(P, Fd)),
        %% Of an empty file.
        Empty = path(Dir, "empty"),
        ok = file:write_file(Empty, <<>>),
        E = open(P, ?RD, Empty),
        ?assertEqual({ok, reference_sha256(Empty, <<>>)}, sha256(P, E)),
        ?assertEqual(ok, close(P, E)),
        %% Of a file open for writing only: reading it is not allowed.
        W = open(P, ?WR, F),
        ?assertEqual({error, ebadf}, sha256(P, W)),
        ?assertEqual(ok, close(P, W))
    end).

sha256_of_nothing() ->
    binary:decode_hex(<<"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855">>).

listdir() ->
    with(fun(P, Dir) ->
        ok = file:write_file(filename:join(Dir, "file"), <<"x">>),
        ok = file:make_dir(filename:join(Dir, "sub")),
        ok = file:make_symlink("file", filename:join(Dir, "link")),
        ok = file:make_symlink("sub", filename:join(Dir, "dirlink")),
        ok = file:make_symlink("nowhere", filename:join(Dir, "dangling")),
        %% A name that is not UTF-8, as raw bytes.
        Raw = <<"caf", 233>>,
        ok = file:write_file(<<(iolist_to_binary(Dir))/binary, "/", Raw/binary>>, <<>>),
        Fifo = filename:join(Dir, "fifo"),
        "" = os:cmd("mkfifo '" ++ Fifo ++ "'"),
        Expected = lists:sort([{<<"file">>, regular}, {<<"sub">>, directory},
                               {<<"link">>, symlink}, {<<"dirlink">>, symlink},
                               {<<"dangling">>, symlink}, {Raw, regular},
                               {<<"fifo">>, other}]),
        {ok, Got} = listdir(P, Dir),
        ?assertEqual(Expected, lists:sort(Got)),
        %% An empty directory; one with many entries.
        ?assertEqual({ok, []}, listdir(P, filename:join(Dir, "sub"))),
        Many = filename:join(Dir, "many"),
        ok = file:make_dir(Many),
        Names = [iolist_to_binary(io_lib:format("entry-~4..0b-~s", [I, lists:duplicate(I rem 50, $n)]))
                 || I <- lists:seq(1, 500)],
        [ok = file:write_file(filename:join(Many, N), <<>>) || N <- Names],
        {ok, ManyGot} = listdir(P, Many),
        ?assertEqual(lists:sort([{N, regular} || N <- Names]), lists:sort(ManyGot)),
        %% Through a symlink to a directory, the directory is listed.
        ?assertEqual({ok, []}, listdir(P, filename:join(Dir, "dirlink"))),
        ?assertEqual({error, enoent}, listdir(P, filename:join(Dir, "missing"))),
        ?assertEqual({error, enotdir}, listdir(P, filename:join(Dir, "file"))),
        ?assertEqual({error, enoent}, listdir(P, <<>>))
    end).

errors() ->
    with(fun(P, Dir) ->
        Missing = path(Dir, "missing"),
        ?assertEqual({error, enoent}, result(element(1, open_req(P, ?RD, Missing)))),
        ?assertEqual({error, enoent},
                     result(element(1, open_req(P, ?WR, path(Dir, "no/such/dir"))))),
        %% Handles never opened.
        ?assertEqual({error, ebadf}, read(P, 0, 1)),
        ?assertEqual({error, ebadf}, read(P, 999, 1)),
        ?assertEqual({error, ebadf}, write(P, 999, <<"x">>)),
        ?assertEqual({error, ebadf}, fsync(P, 999)),
        ?assertEqual({error, ebadf}, sha256(P, 999)),
        ?assertEqual({error, ebadf}, position(P, 999, 0)),
        ?assertEqual({error, ebadf}, close(P, 999)),
        %% A closed handle.
        F = path(Dir, "f"),
        Fd = open(P, ?WR bor ?CREATE, F),
        ?assertEqual(ok, close(P, Fd)),
        ?assertEqual({error, ebadf}, read(P, Fd, 1)),
        ?assertEqual({error, ebadf}, write(P, Fd, <<"x">>)),
        ?assertEqual({error, ebadf}, close(P, Fd)),
        %% Writing a file open for reading only.
        R = open(P, ?RD, F),
        ?assertEqual({error, ebadf}, write(P, R, <<"x">>)),
        ?assertEqual(ok, close(P, R)),
        %% A directory opens for reading, but does not read; it does not open
        %% for writing.
        D = open(P, ?RD, Dir),
        ?assertEqual({error, eisdir}, read(P, D, 10)),
        ?assertEqual({error, eisdir}, sha256(P, D)),
        ?assertEqual(ok, close(P, D)),
        ?assertEqual({error, eisdir}, result(element(1, open_req(P, ?WR, Dir)))),
        ?assertEqual({error, eisdir}, result(element(1, open_req(P, ?RD bor ?WR, Dir)))),
        %% A failed open kills its handle, for requests sent before and after
        %% its result.
        {Ref, Bad} = open_req(P, ?RD, Missing),
        Before = req(P, ?READ, <<Bad:32, 1:32>>),
        ?assertEqual({error, enoent}, result(Ref)),
        ?assertEqual({error, ebadf}, result(Before)),
        ?assertEqual({error, ebadf}, read(P, Bad, 1)),
        ?assertEqual({error, ebadf}, close(P, Bad))
    end).

%% Malformed requests are badarg, use no Ref, and leave the port working.
badarg() ->
    with(fun(P, Dir) ->
        Bad = [{99, <<>>}, {0, <<>>}, {9, <<1:32>>},
               {?OPEN, <<>>}, {?OPEN, <<64, "/tmp/x">>}, {?OPEN, <<?RD, "/tmp", 0, "x">>},
               {?READ, <<1:32>>}, {?READ, <<1:32, 1:32, 0>>},
               {?WRITE, <<1, 2, 3>>},
               {?FSYNC, <<>>}, {?FSYNC, <<1:32, 0>>},
               {?CLOSE, <<1:24>>}, {?SHA256, <<1:40>>},
               {?LISTDIR, <<"/tmp", 0>>},
               {?POSITION, <<1:32, 0:32>>}, {?POSITION, <<1:32, 0:72>>}],
        [?assertError(badarg, port_control(P, Op, Data)) || {Op, Data} <- Bad],
        ?assertNotEqual(undefined, erlang:port_info(P)),
        F = path(Dir, "ok"),
        ?assertEqual(<<1:32, 1:32>>, port_control(P, ?OPEN, [?WR bor ?CREATE, F])),
        ?assertEqual(ok, result(1)),
        receive
            {file_drv, _, _} = M -> error({unexpected, M})
        after 0 ->
            ok
        end
    end).

%% One file's operations run in order, and their results come in order,
%% while another file's are queued among them. Two requests on A for each one
%% on B: without a key per file, consecutive requests would alternate between
%% the two pool threads and A's would be spread over both.
per_file_order() ->
    with(fun(P, Dir) ->
        N = 1500,
        A = open(P, ?RD bor ?WR bor ?CREATE, path(Dir, "a")),
        B = open(P, ?RD bor ?WR bor ?CREATE, path(Dir, "b")),
        Refs = lists:append([[{a, req(P, ?WRITE, <<A:32, (2 * I - 1):32>>)},
                              {a, req(P, ?WRITE, <<A:32, (2 * I):32>>)},
                              {b, req(P, ?WRITE, <<B:32, (N - I):32>>)}]
                             || I <- lists:seq(1, N)]),
        RA = [req(P, ?POSITION, <<A:32, 0:64>>), req(P, ?READ, <<A:32, (8 * N):32>>)],
        RB = [req(P, ?POSITION, <<B:32, 0:64>>), req(P, ?READ, <<B:32, (4 * N):32>>)],
        %% Take the results as they come.
        Total = length(Refs) + 4,
        Arrived = [receive {file_drv, R, Res} -> {R, Res} after ?TIMEOUT -> error(timeout) end
                   || _ <- lists:seq(1, Total)],
        Order = [R || {R, _} <- Arrived],
        Of = fun(Which, Extra) -> [R || {W, R} <- Refs, W =:= Which] ++ Extra end,
        OfA = Of(a, RA),
        OfB = Of(b, RB),
        ?assertEqual(OfA, [R || R <- Order, lists:member(R, OfA)]),
        ?assertEqual(OfB, [R || R <- Order, lists:member(R, OfB)]),
        Results = maps:from_list(Arrived),
        ?assert(lists:all(fun({_, R}) -> maps:get(R, Results) =:= ok end, Refs)),
        ?assertEqual({ok, 0}, maps:get(hd(RA), Results)),
        ?assertEqual({ok, << <<I:32>> || I <- lists:seq(1, 2 * N) >>},
                     maps:get(lists:last(RA), Results)),
        ?assertEqual({ok, << <<(N - I):32>> || I <- lists:seq(1, N) >>},
                     maps:get(lists:last(RB), Results)),
        ?assertEqual(ok, close(P, A)),
        ?assertEqual(ok, close(P, B))
    end).

%% Closing the port closes its open files, after their queued operations.
port_close_closes_files() ->
    Dir = tmpdir(),
    try
        ?assertEqual([], fds_under(Dir)),
        P = port(),
        Files = [path(Dir, "f" ++ integer_to_list(I)) || I <- lists:seq(1, 10)],
        Fds = [open(P, ?WR bor ?CREATE, F) || F <- Files],
        ?assertEqual(10, length(fds_under(Dir))),
        %% Queued writes, then an open still in flight, then the close.
        Chunk = pattern(1000),
        [req(P, ?WRITE, [<<Fd:32>>, Chunk]) || Fd <- Fds, _ <- lists:seq(1, 50)],
        _ = open_req(P, ?WR bor ?CREATE, path(Dir, "late")),
        port_close(P),
        wait_until(fun() -> fds_under(Dir) =:= [] end, ?TIMEOUT),
        %% Every queued write ran before its file's close.
        Expected = binary:copy(Chunk, 50),
        [?assertEqual({ok, Expected}, file:read_file(F)) || F <- Files],
        ?assert(filelib:is_regular(filename:join(Dir, "late")))
    after
        flush(),
        ok = file:del_dir_r(Dir)
    end.

%% An owner that dies closes the port, and so the files.
owner_exit_closes_files() ->
    Dir = tmpdir(),
    try
        Self = self(),
        {Pid, Mon} = spawn_monitor(fun() ->
            P = port(),
            _ = [open(P, ?RD bor ?WR bor ?CREATE, path(Dir, [$g, I])) || I <- "abc"],
            Self ! opened,
            exit(done)
        end),
        receive opened -> ok after ?TIMEOUT -> error(not_opened) end,
        receive {'DOWN', Mon, process, Pid, done} -> ok after ?TIMEOUT -> error(no_down) end,
        wait_until(fun() -> fds_under(Dir) =:= [] end, ?TIMEOUT)
    after
        ok = file:del_dir_r(Dir)
    end.
