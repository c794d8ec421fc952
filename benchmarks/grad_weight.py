"""grad_weight (the valid correlation) on every suite shape, both layouts."""

import convgrad

from .common import SuiteCase


class GradWeight(SuiteCase):
    version = "1"  # pinned: edits to this file keep the dashboard's history comparable
    flops_share = 0.5

    def run(self):
        return convgrad.conv2d_grad_weight(
            self.g, self.x, self.w.shape, layout=self.layout, **self.shape.options
        )

    def time_grad_weight(self, shape_name, layout):
        self.run()
