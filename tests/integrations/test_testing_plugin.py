"""retract.testing: the pytest plugin's fixtures and assertions, in a project of its own."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def test_the_plugin_works_beside_pytest_asyncio_and_anyio(pytester: pytest.Pytester) -> None:
    """Loaded by its entry point, its sync fixtures serve asyncio and anyio tests alike."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_user="""
        import anyio
        import pytest

        from retract.testing import assert_completed, assert_rolled_back


        @pytest.mark.asyncio
        async def test_with_pytest_asyncio(retract_journal, retract_registry, tmp_path):
            retract_registry.handler("demo.op")(lambda op: None)
            async with retract_journal as journal:
                async with journal.start_session() as session:
                    await session.record_operation("demo.op", {})
                await assert_completed(journal)
                with pytest.raises(RuntimeError):
                    async with journal.start_session(undo_on_error=True) as session:
                        await session.record_operation("demo.op", {})
                        raise RuntimeError("boom")
                await assert_rolled_back(journal, session.session_id)


        @pytest.mark.anyio
        async def test_with_anyio(retract_journal, retract_journal_path):
            async with retract_journal as journal:
                async with journal.start_session():
                    pass
                await assert_completed(journal)
            assert retract_journal_path.exists()


        @pytest.fixture
        def anyio_backend():
            return "asyncio"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_failed_assertions_say_what_is_wrong(pytester: pytest.Pytester) -> None:
    """assert_rolled_back and assert_completed name the status and the operations."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_user="""
        import pytest

        from retract.testing import assert_completed, assert_rolled_back


        @pytest.mark.asyncio
        async def test_wrong_expectations(retract_journal, retract_registry):
            retract_registry.handler("demo.op")(lambda op: None)
            async with retract_journal as journal:
                with pytest.raises(AssertionError, match="the journal has no session"):
                    await assert_completed(journal)
                async with journal.start_session() as session:
                    await session.record_operation("demo.op", {})
                with pytest.raises(AssertionError, match=r"completed, not rolled_back; "
                                   r"not undone: #1 demo.op \\(done\\)"):
                    await assert_rolled_back(journal)
                with pytest.raises(AssertionError, match="has no session nope"):
                    await assert_completed(journal, "nope")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
