"""The forward convolution (``conv2d``) on every suite shape, both layouts."""

import convgrad

from .common import SuiteCase


class Forward(SuiteCase):
    version = "1"  # pinned: edits to this file keep the dashboard's history comparable
    flops_share = 0.5  # one multiply-add per term, like one of the two gradients

    def run(self):
        return convgrad.conv2d(self.x, self.w, self.b, layout=self.layout, **self.shape.options)

    def time_forward(self, shape_name, layout):
        self.run()
