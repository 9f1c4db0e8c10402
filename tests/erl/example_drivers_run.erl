%% Runs the EUnit tests of the example drivers in this erl:
%%
%%   erl -noshell +A 2 -pa EBIN -run example_drivers_run main DRIVERS_DIR
%%
%% DRIVERS_DIR holds echo_drv.so and file_drv.so. This process loads both
%% drivers first and keeps them loaded until the end, so that a driver stays
%% in place while the async jobs of a test's closed port finish. Halts with 0
%% when every test passed, 1 otherwise.
-module(example_drivers_run).
-export([main/1]).

main([Dir]) ->
    os:putenv("EDRV_DRIVERS", Dir),
    main([]);
main([]) ->
    Status =
        try
            Dir = case os:getenv("EDRV_DRIVERS") of
                      false -> error(edrv_drivers_not_set);
                      D -> D
                  end,
            [load(Dir, Name) || Name <- ["echo_drv", "file_drv"]],
            io:format("drivers from ~s; async threads: ~p~n",
                      [Dir, erlang:system_info(thread_pool_size)]),
            case eunit:test([echo_drv_tests, file_drv_tests], [verbose]) of
                ok -> 0;
                _ -> 1
            end
        catch
            C:R:St ->
                io:format("~p:~p~n~p~n", [C, R, St]),
                1
        end,
    halt(Status).

load(Dir, Name) ->
    case erl_ddll:load_driver(Dir, Name) of
        ok -> ok;
        {error, E} -> error({load_driver, Name, erl_ddll:format_error(E)})
    end.
