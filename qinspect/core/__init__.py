"""The Qt-free engine: model index, data, statistics, ranges, encodings, plan and file formats."""
