"""The one exception of the simulator."""


class SimulationError(ValueError):
    """Bad options for a simulated run or programme; raised before anything is written.

    The message names the option at fault and what was expected.
    """
