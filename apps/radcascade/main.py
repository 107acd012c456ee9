"""radcascade MONAI Label app (thin wiring; the logic lives in the ``radcascade`` package)."""

from radcascade.serving.app import RadCascadeApp


class MyApp(RadCascadeApp):
    """Entry point that ``monailabel start_server --app apps/radcascade`` discovers."""
