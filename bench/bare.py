"""The baseline workflow: bare Temporal, nothing of ours (kept apart so the sandbox imports only this)."""

from temporalio import workflow


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    """A workflow that waits, with an Update that does nothing."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.update
    async def poke(self, value: int) -> int:
        return value

    @poke.validator
    def _check(self, value: int) -> None:
        if value < 0:
            raise ValueError("negative")

    @workflow.signal
    def finish(self) -> None:
        self.done = True
