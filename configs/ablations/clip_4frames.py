# Ablation: shorter clips, 4 frames per clip and per temporal window (released: 8).
# Grid layers keep their [ts, xs]: [4, 1] now means 4 windows of 1 frame (released: 4 windows of 2).
_base_ = ['../s1024.effn-f32.py']

model = dict(lats_per_vid=4)
data = dict(num_frames_per_video=4)
