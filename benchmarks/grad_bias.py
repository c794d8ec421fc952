"""grad_bias (a sum over batch and space) on every suite shape, both layouts."""

import convgrad

from .common import SuiteCase, seconds_per_call


class GradBias(SuiteCase):
    version = "1"  # pinned: edits to this file keep the dashboard's history comparable
    track_gflops = None  # a reduction does no multiply-adds: its rate is given in GB/s

    def run(self):
        return convgrad.conv2d_grad_bias(self.g, layout=self.layout)

    def time_grad_bias(self, shape_name, layout):
        self.run()

    def track_gbytes_per_s(self, shape_name, layout):
        return self.g.nbytes / seconds_per_call(self.run, 0.2) / 1e9

    track_gbytes_per_s.unit = "GB/s"
