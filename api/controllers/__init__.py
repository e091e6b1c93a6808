"""One Litestar Controller per resource."""

from api.controllers.alerts import AlertsController
from api.controllers.bars import BarsController
from api.controllers.dashboard import DashboardController
from api.controllers.features import FeaturesController
from api.controllers.portfolio import ExecutionsController, PortfolioController
from api.controllers.predictions import PredictionsController
from api.controllers.signals import FeedbackController, SignalsController, SimilarController
from api.controllers.health import HealthController
from api.controllers.live import LiveBarsController, LiveSignalsController
from api.controllers.metrics import MetricsController
from api.controllers.symbols import SymbolsController
from api.controllers.trades import TradesController

__all__ = [
    "AlertsController",
    "BarsController",
    "DashboardController",
    "FeaturesController",
    "PortfolioController",
    "ExecutionsController",
    "PredictionsController",
    "SignalsController",
    "FeedbackController",
    "SimilarController",
    "HealthController",
    "LiveBarsController",
    "LiveSignalsController",
    "MetricsController",
    "SymbolsController",
    "TradesController",
    "CONTROLLERS",
]

CONTROLLERS = (HealthController, SymbolsController, BarsController, FeaturesController, PredictionsController,
               SignalsController, FeedbackController, SimilarController, PortfolioController, ExecutionsController,
               AlertsController, TradesController, LiveBarsController, LiveSignalsController, MetricsController,
               DashboardController)
