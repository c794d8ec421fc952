"""grad_input (the scatter-add) on every suite shape, both layouts."""

import convgrad

from .common import SuiteCase


class GradInput(SuiteCase):
    version = "1"  # pinned: edits to this file keep the dashboard's history comparable
    flops_share = 0.5

    def run(self):
        return convgrad.conv2d_grad_input(
            self.g, self.w, self.x.shape, layout=self.layout, **self.shape.options
        )

    def time_grad_input(self, shape_name, layout):
        self.run()
