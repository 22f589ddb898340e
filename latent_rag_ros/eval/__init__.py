"""Evaluation the way the paper measures it: metrics, baselines, recovery attack, runner, reports, bags.

Modules: ``metrics`` (PSNR/SSIM, Rank-k/mAP, embedding cosine), ``baselines`` (none/blur/mosaic),
``recovery`` (U-Net / Restormer attacker), ``sources`` (query / gallery / attacker splits),
``runner`` (``run_eval``), ``report`` and ``figures``
(outputs), ``bags`` (rosbag2 without ROS), ``cli`` (``latent-rag eval`` / ``make-bag``).
Nothing here imports rclpy.
"""
