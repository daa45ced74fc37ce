"""auto's dispatch thresholds (read by fastrnn/dispatch.py): written by `python -m fastrnn.bench
fit` from benchmarks/results/cpu-*.json; edit only the "default" row (the hand measurements).
Each value names the measurement it came from."""
TABLE = {'cpu-amd-epyc-avx2-2c': {'numba_flops_above.fwd': {'from': 'cpu-amd-epyc-avx2-2c.json: per-step GEMM flops '
                                                            'where torch beat numba; '
                                                            'gru-T100-B1-H256-L1-fwd-f32 x1.91 won, '
                                                            'rnn-T100-B16-H256-L1-bi-fwd-f32 x0.90 lost',
                                                    'value': 393216.0},
                          'numba_flops_above.fwdbwd': {'from': 'cpu-amd-epyc-avx2-2c.json: per-step GEMM '
                                                               'flops where torch beat numba; '
                                                               'rnn-T50-B16-H256-L1-fwdbwd-f32 x1.04 won, '
                                                               'gru-T50-B16-H256-L1-fwdbwd-f32 x0.99 lost',
                                                       'value': 2097152.0},
                          'onednn_cpp_rows.panel+step.fwd': {'from': 'cpu-amd-epyc-avx2-2c.json: rows up to '
                                                                     "which cpp beat oneDNN's LSTM, any loop "
                                                                     '(none recorded); '
                                                                     'lstm-T100-B1-H256-L1-fwd-f32 x0.84 '
                                                                     'lost',
                                                             'value': 0},
                          'onednn_cpp_rows.panel+step.fwdbwd': {'from': 'cpu-amd-epyc-avx2-2c.json: rows up '
                                                                        "to which cpp beat oneDNN's LSTM, "
                                                                        'any loop (none recorded); '
                                                                        'lstm-T100-B1-H256-L1-fwdbwd-f32 '
                                                                        'x0.71 lost',
                                                                'value': 0},
                          'onednn_few_rows': {'from': 'cpu-amd-epyc-avx2-2c.json: rows up to which cpp beat '
                                                      "oneDNN's LSTM at every width (no loop recorded); "
                                                      'lstm-T100-B1-H256-L1-fwd-f32 x0.84 lost',
                                              'value': 0},
                          'onednn_narrow_rows': {'from': 'cpu-amd-epyc-avx2-2c.json: rows up to which cpp '
                                                         "beat oneDNN's narrow and wide LSTM (no loop "
                                                         'recorded); lstm-T100-B1-H256-L1-fwd-f32 x0.84 lost',
                                                 'value': 0}},
 'cpu-amd-epyc-avx512-2c': {'numba_flops_above.fwd': {'from': 'cpu-amd-epyc-avx512-2c.json: per-step GEMM '
                                                              'flops where torch beat numba; '
                                                              'rnn-T5-B3-I10-H20-L1-fwd-f32 x0.55 lost',
                                                      'value': 0},
                            'numba_flops_above.fwdbwd': {'from': 'cpu-amd-epyc-avx512-2c.json: per-step GEMM '
                                                                 'flops where torch beat numba; '
                                                                 'rnn-T5-B3-I10-H20-L1-fwdbwd-f32 x0.78 lost',
                                                         'value': 0},
                            'one_step_to_torch.float32.fwd': {'from': 'cpu-amd-epyc-avx512-2c.json: one-step '
                                                                      'layer calls, gru-T1-B1-H64-L1-fwd-f32 '
                                                                      'x0.96, rnn-T1-B1-H64-L1-fwd-f32 x0.78',
                                                              'value': True},
                            'one_step_to_torch.float32.fwdbwd': {'from': 'cpu-amd-epyc-avx512-2c.json: '
                                                                         'one-step layer calls, '
                                                                         'gru-T1-B1-H64-L1-fwdbwd-f32 x0.95, '
                                                                         'rnn-T1-B1-H64-L1-fwdbwd-f32 x0.71',
                                                                 'value': True},
                            'onednn_cpp_rows.panel+step.fwd': {'from': 'cpu-amd-epyc-avx512-2c.json: rows up '
                                                                       "to which cpp beat oneDNN's LSTM, any "
                                                                       'loop (none recorded); '
                                                                       'lstm-T100-B4-H512-L1-fwd-f32 x1.14 '
                                                                       'won, lstm-T100-B16-H256-L1-fwd-f32 '
                                                                       'x0.97 lost',
                                                               'value': 4},
                            'onednn_cpp_rows.panel+step.fwdbwd': {'from': 'cpu-amd-epyc-avx512-2c.json: rows '
                                                                          "up to which cpp beat oneDNN's "
                                                                          'LSTM, any loop (none recorded); '
                                                                          'lstm-T100-B64-H256-L1-fwdbwd-f32 '
                                                                          'x1.19, '
                                                                          'lstm-T100-B64-I128-H512-L1-fwdbwd-f32 '
                                                                          'x1.14, '
                                                                          'lstm-T100-B256-H256-L1-fwdbwd-f32 '
                                                                          'x1.27',
                                                                  'value': 256}},
 'cpu-intel-xeon-avx512-2c': {'bfloat16.native.fused_lstm_rows_above.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.half.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                    '+ '
                                                                                    'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                    "rows where torch's "
                                                                                    'fused bfloat16 LSTM '
                                                                                    'beat cpp; '
                                                                                    'lstm-T100-B16-H512-L1-fwd-bf16 '
                                                                                    'x1.17 won, '
                                                                                    'lstm-T100-B64-H512-L1-fwd-autocast '
                                                                                    'x0.95 lost',
                                                                            'value': 16},
                              'bfloat16.native.fused_lstm_rows_above.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.half.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                       "rows where torch's "
                                                                                       'fused bfloat16 LSTM '
                                                                                       'beat cpp; no loss '
                                                                                       'measured, largest '
                                                                                       'win '
                                                                                       'lstm-T100-B64-H512-L1-fwdbwd-bf16 '
                                                                                       'x1.05 won',
                                                                               'value': 64},
                              'bfloat16.native.gemm_flops_above.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.half.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                  'per-step GEMM flops where '
                                                                                  "torch's bfloat16 beat "
                                                                                  'cpp; no loss measured, '
                                                                                  'largest win '
                                                                                  'gru-T100-B64-H512-L1-fwdbwd-bf16 '
                                                                                  'x1.53 won',
                                                                          'value': 100663296.0},
                              'bfloat16.native_dp.fused_lstm_rows_above.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.half.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                       '+ '
                                                                                       'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                       "rows where torch's "
                                                                                       'fused bfloat16 LSTM '
                                                                                       'beat cpp; '
                                                                                       'lstm-T100-B1-H256-L1-fwd-autocast '
                                                                                       'x0.89 lost',
                                                                               'value': 0},
                              'bfloat16.native_dp.fused_lstm_rows_above.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.half.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                          '+ '
                                                                                          'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                          'rows where '
                                                                                          "torch's fused "
                                                                                          'bfloat16 LSTM '
                                                                                          'beat cpp; '
                                                                                          'lstm-T100-B1-H512-L1-fwdbwd-bf16 '
                                                                                          'x3.34 won, '
                                                                                          'lstm-T100-B16-H128-L1-fwdbwd-bf16 '
                                                                                          'x0.81 lost',
                                                                                  'value': 1},
                              'bfloat16.native_dp.gemm_flops_above.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.half.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                  '+ '
                                                                                  'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                  'per-step GEMM flops where '
                                                                                  "torch's bfloat16 beat "
                                                                                  'cpp; '
                                                                                  'gru-T100-B64-H128-L1-fwd-bf16 '
                                                                                  'x1.20 won, '
                                                                                  'rnn-T100-B16-H512-L1-fwd-bf16 '
                                                                                  'x0.79 lost',
                                                                          'value': 6291456.0},
                              'bfloat16.native_dp.gemm_flops_above.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.half.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                     '+ '
                                                                                     'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                     'per-step GEMM flops '
                                                                                     "where torch's bfloat16 "
                                                                                     'beat cpp; '
                                                                                     'gru-T100-B64-H128-L1-fwdbwd-bf16 '
                                                                                     'x1.62 won, '
                                                                                     'rnn-T100-B64-H256-L1-fwdbwd-bf16 '
                                                                                     'x0.91 lost',
                                                                             'value': 6291456.0},
                              'cpp.step_input.backward.bytes_per_row': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.half.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.plans.json '
                                                                                '+ '
                                                                                'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                                'weight bytes per batch row '
                                                                                'up to which the in-step '
                                                                                'backward won above that '
                                                                                'size; '
                                                                                'rnn-T100-B64-H128-L1-fwdbwd-f32 '
                                                                                'in steps x0.95 lost',
                                                                        'value': 0},
                              'cpp.step_input.backward.cached_bytes': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.half.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.plans.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                               '[W_ih; W_hh] bytes up to '
                                                                               "which cpp's in-step backward "
                                                                               'won; '
                                                                               'rnn-T100-B16-H128-L1-fwdbwd-f32 '
                                                                               'in steps x0.92 lost',
                                                                       'value': 0},
                              'cpp.step_input.forward.bytes_per_row': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.half.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.plans.json '
                                                                               '+ '
                                                                               'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                               'weight bytes per batch row '
                                                                               'up to which the in-step '
                                                                               'forward won above that size; '
                                                                               'rnn-T100-B64-H512-L1-fwd-f32 '
                                                                               'in steps x1.23 won, '
                                                                               'gru-T100-B16-H256-L1-fwd-f32 '
                                                                               'in steps x0.93 lost',
                                                                       'value': 32768},
                              'cpp.step_input.forward.cached_bytes': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.half.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.plans.json '
                                                                              '+ '
                                                                              'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                              '[W_ih; W_hh] bytes up to '
                                                                              "which cpp's in-step forward "
                                                                              'won; '
                                                                              'rnn-T100-B64-H256-L1-fwd-f32 '
                                                                              'in steps x1.24 won, '
                                                                              'gru-T100-B16-H256-L1-fwd-f32 '
                                                                              'in steps x0.93 lost',
                                                                      'value': 524288},
                              'numba_flops_above.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json + '
                                                                'cpu-intel-xeon-avx512-2c.half.json + '
                                                                'cpu-intel-xeon-avx512-2c.json + '
                                                                'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                '+ cpu-intel-xeon-avx512-2c.lstm-f32.json + '
                                                                'cpu-intel-xeon-avx512-2c.ort-small.json + '
                                                                'cpu-intel-xeon-avx512-2c.plans-b16.json + '
                                                                'cpu-intel-xeon-avx512-2c.plans.json + '
                                                                'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                'per-step GEMM flops where torch beat numba; '
                                                                'rnn-T100-B1-H256-L1-fwd-f32 x1.80 won, '
                                                                'gru-T100-B4-H256-L1-fwd-f32 x0.48 lost',
                                                        'value': 131072.0},
                              'numba_flops_above.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json + '
                                                                   'cpu-intel-xeon-avx512-2c.half.json + '
                                                                   'cpu-intel-xeon-avx512-2c.json + '
                                                                   'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                   '+ cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                   '+ '
                                                                   'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                   '+ '
                                                                   'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                   '+ cpu-intel-xeon-avx512-2c.plans.json + '
                                                                   'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                   'per-step GEMM flops where torch beat '
                                                                   'numba; gru-T100-B4-H256-L1-fwdbwd-f32 '
                                                                   'x1.65 won, '
                                                                   'rnn-T100-B16-H256-L1-fwdbwd-f32 x0.97 '
                                                                   'lost',
                                                           'value': 1572864.0},
                              'one_step_to_torch.float32.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.half.json '
                                                                        '+ cpu-intel-xeon-avx512-2c.json + '
                                                                        'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.plans.json '
                                                                        '+ '
                                                                        'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                        'one-step layer calls, '
                                                                        'gru-T1-B1-H64-L1-fwd-f32 x1.90, '
                                                                        'rnn-T1-B1-H64-L1-fwd-f32 x1.37, '
                                                                        'gru-T1-B1-H64-L1-fwd-f32 x1.90, '
                                                                        'rnn-T1-B1-H64-L1-fwd-f32 x1.37',
                                                                'value': False},
                              'one_step_to_torch.float32.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.half.json '
                                                                           '+ cpu-intel-xeon-avx512-2c.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.plans.json '
                                                                           '+ '
                                                                           'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                           'one-step layer calls, '
                                                                           'gru-T1-B1-H64-L1-fwdbwd-f32 '
                                                                           'x0.94, '
                                                                           'rnn-T1-B1-H64-L1-fwdbwd-f32 '
                                                                           'x0.69',
                                                                   'value': True},
                              'onednn_cpp_rows.panel+step.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.half.json '
                                                                         '+ cpu-intel-xeon-avx512-2c.json + '
                                                                         'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.plans.json '
                                                                         '+ '
                                                                         'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                         "rows up to which cpp's panel+step "
                                                                         "loop beat oneDNN's LSTM; "
                                                                         'lstm-T500-B16-H256-L1-fwd-f32 '
                                                                         'x1.06 won, fastrnns-default-fwd '
                                                                         'x0.99 lost',
                                                                 'value': 16},
                              'onednn_cpp_rows.panel+step.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.half.json '
                                                                            '+ cpu-intel-xeon-avx512-2c.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.plans.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                            "rows up to which cpp's "
                                                                            "panel+step loop beat oneDNN's "
                                                                            'LSTM; '
                                                                            'lstm-T100-B16-H128-L1-fwdbwd-f32 '
                                                                            'x0.93 lost',
                                                                    'value': 0},
                              'onednn_cpp_rows.panel.fwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json + '
                                                                    'cpu-intel-xeon-avx512-2c.half.json + '
                                                                    'cpu-intel-xeon-avx512-2c.json + '
                                                                    'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                    '+ '
                                                                    'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                    '+ '
                                                                    'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                    '+ '
                                                                    'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                    '+ cpu-intel-xeon-avx512-2c.plans.json + '
                                                                    'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                    "rows up to which cpp's panel loop beat "
                                                                    "oneDNN's LSTM; "
                                                                    'lstm-T100-B4-H512-L1-fwd-f32 x2.09 won, '
                                                                    'lstm-T100-B16-H256-L1-fwd-f32 x0.96 '
                                                                    'lost',
                                                            'value': 4},
                              'onednn_cpp_rows.panel.fwd.bi': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.half.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.json + '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                       "rows up to which cpp's panel loop "
                                                                       "beat oneDNN's bidirectional LSTM; "
                                                                       'lstm-T100-B16-H256-L1-bi-fwd-f32 '
                                                                       'x1.23, '
                                                                       'lstm-T100-B16-H256-L2-bi-fwd-f32 '
                                                                       'x1.15, '
                                                                       'lstm-T100-B16-H256-L4-bi-fwd-f32 '
                                                                       'x1.15',
                                                               'value': 16},
                              'onednn_cpp_rows.panel.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.half.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.json + '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                       "rows up to which cpp's panel loop "
                                                                       "beat oneDNN's LSTM; "
                                                                       'lstm-T100-B4-H512-L1-fwdbwd-f32 '
                                                                       'x1.26 won, '
                                                                       'lstm-T100-B16-H256-L2-fwdbwd-f32 '
                                                                       'x0.97 lost',
                                                               'value': 4},
                              'onednn_cpp_rows.panel.fwdbwd.bi': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.half.json '
                                                                          '+ cpu-intel-xeon-avx512-2c.json + '
                                                                          'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.plans.json '
                                                                          '+ '
                                                                          'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                          "rows up to which cpp's panel loop "
                                                                          "beat oneDNN's bidirectional LSTM; "
                                                                          'lstm-T100-B16-H256-L2-bi-fwdbwd-f32 '
                                                                          'x1.25, '
                                                                          'lstm-T100-B16-H256-L2-bi-fwdbwd-f32 '
                                                                          'x1.34, '
                                                                          'lstm-T100-B16-H256-L4-bi-fwdbwd-f32 '
                                                                          'x1.35',
                                                                  'value': 16},
                              'onednn_cpp_wide.panel+step.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.half.json '
                                                                            '+ cpu-intel-xeon-avx512-2c.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.plans.json '
                                                                            '+ '
                                                                            'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                            '[hidden from, hidden to, rows]: '
                                                                            "at those widths cpp's "
                                                                            "panel+step loop beat oneDNN's "
                                                                            'LSTM on every case measured, up '
                                                                            'to those rows; '
                                                                            'lstm-T500-B16-H256-L1-fwdbwd-f32 '
                                                                            'x1.27, '
                                                                            'lstm-T1000-B16-H256-L1-fwdbwd-f32 '
                                                                            'x1.26, '
                                                                            'lstm-T100-B64-H256-L1-fwdbwd-f32 '
                                                                            'x1.28, '
                                                                            'lstm-T100-B256-H256-L1-fwdbwd-f32 '
                                                                            'x1.30 won; widest loss '
                                                                            'lstm-T100-B16-H128-L1-fwdbwd-f32 '
                                                                            'x0.93',
                                                                    'value': [256, 512, 256]},
                              'onednn_cpp_wide.panel.fwdbwd': {'from': 'cpu-intel-xeon-avx512-2c.half-dp.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.half.json '
                                                                       '+ cpu-intel-xeon-avx512-2c.json + '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-b16-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.lstm-f32.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.ort-small.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans-b16.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.plans.json '
                                                                       '+ '
                                                                       'cpu-intel-xeon-avx512-2c.sweeps-f32.json: '
                                                                       '[hidden from, hidden to, rows]: at '
                                                                       "those widths cpp's panel loop beat "
                                                                       "oneDNN's LSTM on every case "
                                                                       'measured, up to those rows; '
                                                                       'lstm-T100-B4-H512-L1-fwdbwd-f32 '
                                                                       'x1.26, '
                                                                       'lstm-T100-B16-H512-L1-fwdbwd-f32 '
                                                                       'x1.10, '
                                                                       'lstm-T100-B16-H1024-L1-fwdbwd-f32 '
                                                                       'x1.17, '
                                                                       'lstm-T100-B64-H1024-L1-fwdbwd-f32 '
                                                                       'x1.02 won; widest loss '
                                                                       'lstm-T100-B16-H256-L2-fwdbwd-f32 '
                                                                       'x0.97',
                                                               'value': [512, 1024, 64]}},
 'default': {'bfloat16.fused_lstm_rows_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                            'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, '
                                                            'T=100, I=H, torch time / cpp time, min of 7 '
                                                            'alternating calls of CPU time on one thread '
                                                            '(shared cores, load 5-8); bf16 LSTM fwd B1 '
                                                            'H128/256/512 0.56/0.50/0.37, B16 0.20-0.32: '
                                                            'torch at any batch',
                                                    'value': 0},
             'bfloat16.fused_lstm_rows_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                               'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, '
                                                               'T=100, I=H, torch time / cpp time, min of 7 '
                                                               'alternating calls of CPU time on one thread '
                                                               '(shared cores, load 5-8); bf16 LSTM fwd+bwd '
                                                               'B1 1.36-2.43, B2 H256 1.77 | B4 H128/256 '
                                                               '0.77/0.88',
                                                       'value': 2},
             'bfloat16.gemm_flops_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                       'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, T=100, '
                                                       'I=H, torch time / cpp time, min of 7 alternating '
                                                       'calls of CPU time on one thread (shared cores, load '
                                                       '5-8); bf16 GRU/RNN fwd 1.6-2.1 MFLOP 1.11-1.97 | GRU '
                                                       '6.3 MF 0.84, RNN 8.4 MF 0.55',
                                               'value': 4000000.0},
             'bfloat16.gemm_flops_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                          'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, '
                                                          'T=100, I=H, torch time / cpp time, min of 7 '
                                                          'alternating calls of CPU time on one thread '
                                                          '(shared cores, load 5-8); bf16 fwd+bwd GRU 6.3 MF '
                                                          '1.02-1.08 | RNN 8.4 MF 0.58, GRU 25 MF 0.52',
                                                  'value': 8000000.0},
             'bfloat16.native.fused_lstm_rows_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids '
                                                                   'class: AVX512_BF16, AMX), torch 2.13, '
                                                                   'T=100, I=H, cpp native bf16 (AMX tiles; '
                                                                   'backward: fp32 pointwise, bf16 GEMM '
                                                                   'operands), torch time / cpp time, min of '
                                                                   '5 (fwd) or 3 (fwd+bwd) alternating calls '
                                                                   'of CPU time on one thread (shared cores, '
                                                                   'load 2.3-3.1); bf16 LSTM fwd B1 '
                                                                   'H128/256/512 1.03/0.91/0.85, B16 '
                                                                   '0.86/0.83/1.34, B64 0.74/0.81/0.81: '
                                                                   "torch at any batch (oneDNN's fused bf16 "
                                                                   'LSTM)',
                                                           'value': 0},
             'bfloat16.native.fused_lstm_rows_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids '
                                                                      'class: AVX512_BF16, AMX), torch 2.13, '
                                                                      'T=100, I=H, cpp native bf16 (AMX '
                                                                      'tiles; backward: fp32 pointwise, bf16 '
                                                                      'GEMM operands), torch time / cpp '
                                                                      'time, min of 5 (fwd) or 3 (fwd+bwd) '
                                                                      'alternating calls of CPU time on one '
                                                                      'thread (shared cores, load 2.3-3.1); '
                                                                      'bf16 LSTM fwd+bwd B1 H128/256/512 '
                                                                      '1.59/3.14/3.17, B2 H256/512 '
                                                                      '2.53/3.19, B4 H128/256 1.31/2.09 | '
                                                                      'B16 H128/256/512 0.80/0.96/1.53, B64 '
                                                                      '0.50/0.95/0.98',
                                                              'value': 4},
             'bfloat16.native.gemm_flops_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                              'AVX512_BF16, AMX), torch 2.13, T=100, I=H, '
                                                              'cpp native bf16 (AMX tiles; backward: fp32 '
                                                              'pointwise, bf16 GEMM operands), torch time / '
                                                              'cpp time, min of 5 (fwd) or 3 (fwd+bwd) '
                                                              'alternating calls of CPU time on one thread '
                                                              '(shared cores, load 2.3-3.1); bf16 GRU/RNN '
                                                              'fwd won every measured case: B1-64 H128-512 '
                                                              '1.70-17.0, GRU B64 H1024 (403 MF) 1.46, GRU '
                                                              'B256 H512 (403 MF) 1.57, RNN B256 H1024 (537 '
                                                              'MF) 1.12; larger steps not measured',
                                                      'value': 536870912.0},
             'bfloat16.native.gemm_flops_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                                 'AVX512_BF16, AMX), torch 2.13, T=100, I=H, '
                                                                 'cpp native bf16 (AMX tiles; backward: fp32 '
                                                                 'pointwise, bf16 GEMM operands), torch time '
                                                                 '/ cpp time, min of 5 (fwd) or 3 (fwd+bwd) '
                                                                 'alternating calls of CPU time on one '
                                                                 'thread (shared cores, load 2.3-3.1); bf16 '
                                                                 'fwd+bwd GRU/RNN B1-64 H128-256 1.18-10.5, '
                                                                 'GRU B16 H512 (25 MF) 2.73, GRU B64 H256 '
                                                                 '(25 MF) 1.36 | RNN B64 H512 (33.5 MF) 0.84 '
                                                                 '(GRU B64 H512, 100 MF, 1.43)',
                                                         'value': 25165824.0},
             'bfloat16.native_dp.fused_lstm_rows_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids '
                                                                      'class) with FASTRNN_ISA=avx512_bf16: '
                                                                      "cpp's native bf16 on vdpbf16ps alone "
                                                                      '(the path of CPUs with AVX512_BF16 '
                                                                      'but no AMX, Zen4 among them; on this '
                                                                      'CPU vdpbf16ps runs at half the rate '
                                                                      'of an fp32 FMA), against torch 2.13 '
                                                                      'on its AMX oneDNN kernels, so '
                                                                      'conservative where torch has no AMX; '
                                                                      'T=100, I=H, torch time / cpp time, '
                                                                      'medians side by side '
                                                                      '(benchmarks/results/cpu-intel-xeon-avx512-2c.half-dp.json); '
                                                                      'bf16 LSTM fwd B1 H128 1.27 | B1 H256 '
                                                                      '0.94, B1 H512 0.78: torch at any '
                                                                      'batch',
                                                              'value': 0},
             'bfloat16.native_dp.fused_lstm_rows_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids '
                                                                         'class) with '
                                                                         "FASTRNN_ISA=avx512_bf16: cpp's "
                                                                         'native bf16 on vdpbf16ps alone '
                                                                         '(the path of CPUs with AVX512_BF16 '
                                                                         'but no AMX, Zen4 among them; on '
                                                                         'this CPU vdpbf16ps runs at half '
                                                                         'the rate of an fp32 FMA), against '
                                                                         'torch 2.13 on its AMX oneDNN '
                                                                         'kernels, so conservative where '
                                                                         'torch has no AMX; T=100, I=H, '
                                                                         'torch time / cpp time, medians '
                                                                         'side by side '
                                                                         '(benchmarks/results/cpu-intel-xeon-avx512-2c.half-dp.json); '
                                                                         'bf16 LSTM fwd+bwd B1 2.3-3.4 | B16 '
                                                                         'H128 0.84',
                                                                 'value': 1},
             'bfloat16.native_dp.gemm_flops_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class) '
                                                                 "with FASTRNN_ISA=avx512_bf16: cpp's native "
                                                                 'bf16 on vdpbf16ps alone (the path of CPUs '
                                                                 'with AVX512_BF16 but no AMX, Zen4 among '
                                                                 'them; on this CPU vdpbf16ps runs at half '
                                                                 'the rate of an fp32 FMA), against torch '
                                                                 '2.13 on its AMX oneDNN kernels, so '
                                                                 'conservative where torch has no AMX; '
                                                                 'T=100, I=H, torch time / cpp time, medians '
                                                                 'side by side '
                                                                 '(benchmarks/results/cpu-intel-xeon-avx512-2c.half-dp.json); '
                                                                 'bf16 GRU/RNN fwd to 6.3 MF a step 1.1-21 '
                                                                 '(GRU B64 H128 1.18) | RNN B16 H512 (8.4 '
                                                                 'MF) 0.85',
                                                         'value': 6291456.0},
             'bfloat16.native_dp.gemm_flops_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids '
                                                                    'class) with FASTRNN_ISA=avx512_bf16: '
                                                                    "cpp's native bf16 on vdpbf16ps alone "
                                                                    '(the path of CPUs with AVX512_BF16 but '
                                                                    'no AMX, Zen4 among them; on this CPU '
                                                                    'vdpbf16ps runs at half the rate of an '
                                                                    'fp32 FMA), against torch 2.13 on its '
                                                                    'AMX oneDNN kernels, so conservative '
                                                                    'where torch has no AMX; T=100, I=H, '
                                                                    'torch time / cpp time, medians side by '
                                                                    'side '
                                                                    '(benchmarks/results/cpu-intel-xeon-avx512-2c.half-dp.json); '
                                                                    'bf16 GRU/RNN fwd+bwd to 6.3 MF 1.6-13 '
                                                                    '(GRU B64 H128 1.61) | RNN B64 H256 (8.4 '
                                                                    'MF) 0.96',
                                                            'value': 6291456.0},
             'cpp.panel_loop.backward.max_bytes': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, ratio '
                                                           'to torch panel / BLAS loop: the panel loop ahead '
                                                           'at every size measured (GRU B64 H512 1.22 / '
                                                           '1.12, RNN B64 H1024 1.22 / 1.11 fwd+bwd): no '
                                                           'limit',
                                                   'value': 1099511627776},
             'cpp.panel_loop.forward.max_bytes': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, ratio to '
                                                          'torch panel / BLAS loop: the panel loop ahead at '
                                                          'every size measured (GRU B64 H512 1.24 / 1.09, '
                                                          'RNN B64 H1024 1.28 / 1.14 fwd): no limit',
                                                  'value': 1099511627776},
             'cpp.step_input.backward.bytes_per_row': {'from': '2-core AMD EPYC Zen4, same runs: above 8 MiB '
                                                               'the steps still won with many rows (LSTM '
                                                               'T=50 B16 H1024, 2 MiB a row, 0.70 / 1.04 '
                                                               'lost; B64 H512 won), so up to 512 KiB of '
                                                               'weights per batch row (csrc/loop_plan.cpp)',
                                                       'value': 524288},
             'cpp.step_input.backward.cached_bytes': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, '
                                                              "fwd+bwd, ratio to torch with cpp's in-step "
                                                              'projection and dx / both before and after the '
                                                              'loop: LSTM B4 H128 1.41 / 1.10, B8 H512 (8 '
                                                              'MiB) 0.98 / 0.91, GRU B4 H256 4.37 / 3.98 '
                                                              '(csrc/loop_plan.cpp)',
                                                      'value': 8388608},
             'cpp.step_input.forward.bytes_per_row': {'from': '2-core AMD EPYC Zen4, same runs: above 8 MiB '
                                                              'the steps still won with many rows (LSTM T=50 '
                                                              'B16 H1024, 2 MiB a row, 0.70 / 1.04 lost; B64 '
                                                              'H512 won), so up to 512 KiB of weights per '
                                                              'batch row (csrc/loop_plan.cpp)',
                                                      'value': 524288},
             'cpp.step_input.forward.cached_bytes': {'from': "2-core AMD EPYC Zen4, torch 2.13, T=100, cpp's "
                                                             'panel loop with the input projection in its '
                                                             'steps / before the loop, ratio to torch side '
                                                             'by side, fwd: LSTM B64 H512 (8 MiB) 1.05 / '
                                                             '0.91, RNN B64 H1024 (8 MiB) 1.45 / 1.27, GRU '
                                                             'B4 H512 3.30 / 3.13; but LSTM T=50 B16 H768 '
                                                             '(19 MiB) 0.90 / 0.97 (csrc/loop_plan.cpp)',
                                                     'value': 8388608},
             'float16.fused_lstm_rows_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                           'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, '
                                                           'T=100, I=H, torch time / cpp time, min of 7 '
                                                           'alternating calls of CPU time on one thread '
                                                           '(shared cores, load 5-8); fp16 LSTM fwd B16 '
                                                           'H128/256/512 1.24/1.02/1.05 | B64 0.84-0.89',
                                                   'value': 16},
             'float16.fused_lstm_rows_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                              'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, '
                                                              'T=100, I=H, torch time / cpp time, min of 7 '
                                                              'alternating calls of CPU time on one thread '
                                                              '(shared cores, load 5-8); torch has no fused '
                                                              'fp16 LSTM backward: the GEMM rule applies',
                                                      'value': None},
             'float16.gemm_flops_above.fwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                      'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, T=100, '
                                                      'I=H, torch time / cpp time, min of 7 alternating '
                                                      'calls of CPU time on one thread (shared cores, load '
                                                      '5-8); fp16 fwd RNN 8.4 MF 1.15, GRU 25 MF 1.01 | RNN '
                                                      '33.5 MF 1.00, GRU 100 MF 0.96',
                                              'value': 30000000.0},
             'float16.gemm_flops_above.fwdbwd': {'from': '2-core Intel Xeon (Sapphire Rapids class: '
                                                         'AVX512_BF16, AMX, AVX512_FP16), torch 2.13, T=100, '
                                                         'I=H, torch time / cpp time, min of 7 alternating '
                                                         'calls of CPU time on one thread (shared cores, '
                                                         'load 5-8); fp16 fwd+bwd LSTM 33.5 MF 1.10 | RNN '
                                                         '33.5 MF 0.78, GRU 100 MF 0.84',
                                                 'value': 30000000.0},
             'numba_flops_above.fwd': {'from': '2-core CI-class machine, float32, I=H, torch time / numba '
                                               'time, medians of alternating runs, CPU time on 1 thread | '
                                               'wall 2 threads quiet: LSTM T100 B64 H512 (134 MF) 0.88 | '
                                               '0.56, GRU T200 B16 H128 (1.6 MF) 1.07, RNN T100 B32 H256 '
                                               '(4.2 MF) 1.02 | 0.88, LSTM B1 H256 (0.5 MF) 1.25 | 0.84',
                                       'value': 4000000.0},
             'numba_flops_above.fwdbwd': {'from': 'same runs fwd+bwd: LSTM 134 MF 0.97, GRU 1.6 MF 1.53 | '
                                                  '1.70, RNN 4.2 MF 1.08 | 1.41; training keeps numba to 16 '
                                                  "MFLOP a step (its backward is fused, torch's CPU RNN "
                                                  'backward is per-op autograd)',
                                          'value': 16000000.0},
             'numba_half_to_torch': {'from': '2-core Intel Xeon (Sapphire Rapids class: AVX512_BF16, AMX, '
                                             'AVX512_FP16), torch 2.13, T=100, I=H, torch time / cpp time, '
                                             'min of 7 alternating calls of CPU time on one thread (shared '
                                             'cores, load 5-8); numba: won only bf16 LSTM B1 H256 fwd+bwd '
                                             '2.42, GRU B1 H256 fwd 3.04, GRU B16 H128 fwd 1.18, lost from 2 '
                                             'MFLOP a step (bf16 RNN B16 H256 fwd 0.77, fp16 LSTM B16 H256 '
                                             'fwd 0.67)',
                                     'value': True},
             'one_step_to_torch.float32.fwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time '
                                                       '/ ours side by side in one process, one step fwd: '
                                                       'GRUCell B1 H64 0.54, B64 H256 1.01, RNNCell B8 H64 '
                                                       '0.45, B256 H512 1.05, LSTMCell B64 H256 1.05, B64 '
                                                       'H1024 0.97',
                                               'value': True},
             'one_step_to_torch.float32.fwdbwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch '
                                                          'time / ours side by side in one process, one step '
                                                          'fwd+bwd: GRUCell B1 H64 0.82, B64 H256 0.88, '
                                                          'RNNCell B8 H64 0.51, B256 H512 0.82, LSTMCell B64 '
                                                          'H256 0.82, B64 H1024 0.83',
                                                  'value': True},
             'one_step_to_torch.float64.fwd': {'from': '2-core AMD EPYC Zen4, torch 2.13: as float32 (same '
                                                       'loops, same per-call cost)',
                                               'value': True},
             'one_step_to_torch.float64.fwdbwd': {'from': '2-core AMD EPYC Zen4, torch 2.13: as float32 '
                                                          '(same loops, same per-call cost)',
                                                  'value': True},
             'onednn_cpp_rows.blas.fwd': {'from': '2-core AMD EPYC Zen4, torch 2.13: the BLAS loop (past 512 '
                                                  'rows, or without AVX2) was never measured ahead of '
                                                  "oneDNN's fused LSTM",
                                          'value': 0},
             'onednn_cpp_rows.blas.fwdbwd': {'from': '2-core AMD EPYC Zen4, torch 2.13: the BLAS loop (past '
                                                     '512 rows, or without AVX2) was never measured ahead of '
                                                     "oneDNN's fused LSTM",
                                             'value': 0},
             'onednn_cpp_rows.panel+step.fwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time '
                                                        '/ ours side by side in one process, LSTM vs oneDNN '
                                                        'where the panel loop runs the input projection in '
                                                        'its steps: B16 H256 1.03-1.04, B64 H256 0.98-1.01, '
                                                        'B64 H128 1.01-1.02, 4 layers 1.02-1.04, '
                                                        'fastrnns-default (B64 H512) 1.00-1.07 (every batch '
                                                        'size measured, so all rows)',
                                                'value': 1048576},
             'onednn_cpp_rows.panel+step.fwdbwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch '
                                                           'time / ours side by side in one process, same '
                                                           'shapes fwd+bwd: B16 H256 0.88-1.00, B64 H256 '
                                                           '1.22, B64 H128 1.02-1.04, 4 layers 1.04-1.17, '
                                                           'fastrnns-default 1.10 (every batch size '
                                                           'measured, so all rows)',
                                                   'value': 1048576},
             'onednn_cpp_rows.panel.fwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / '
                                                   'ours side by side: LSTM layers too wide for the in-step '
                                                   'projection lost to oneDNN (T=50 B16 H1024 x0.70-1.04, '
                                                   'B16 H768 x0.90-0.97, B4 H1024 x0.72-1.61 by plan); no '
                                                   'CPU measured ahead of oneDNN there',
                                           'value': 0},
             'onednn_cpp_rows.panel.fwdbwd': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / '
                                                      'ours side by side: LSTM layers too wide for the '
                                                      'in-step projection lost to oneDNN (T=50 B16 H1024 '
                                                      'x0.70-1.04, B16 H768 x0.90-0.97, B4 H1024 x0.72-1.61 '
                                                      'by plan); no CPU measured ahead of oneDNN there',
                                              'value': 0},
             'onednn_few_rows': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / ours side by '
                                         'side in one process, LSTM vs oneDNN: B1 H256 1.09 | 1.18 (fwd | '
                                         'fwd+bwd)',
                                 'value': 2},
             'onednn_mid_hidden': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / ours side '
                                           'by side in one process, LSTM vs oneDNN at 3-4 rows: B4 H512 1.05 '
                                           '| 1.29 but B3 H512 at T=50 0.93 fwd+bwd: rows of 257-1023 units '
                                           'stay with oneDNN unless the panel loop runs the step',
                                   'value': [256, 1024]},
             'onednn_narrow_rows': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / ours side '
                                            'by side in one process, LSTM vs oneDNN: B4 H128 1.15-1.32 | '
                                            '1.41, B4 H1024 1.70 | 1.04',
                                    'value': 4},
             'onednn_short_steps': {'from': '2-core AMD EPYC Zen4, torch 2.13, T=100, torch time / ours side '
                                            'by side in one process, LSTM vs oneDNN at T=1 | 5 | 20 | 50 '
                                            'fwd: B3 H512 4.64 | 3.63 | 2.10 | 1.39, B8 H768 5.12 | 1.29 | '
                                            '1.06 | 1.06, B16 H1024 1.25 | 1.03 | 1.18 | 1.19, B64 H1024 '
                                            '1.05 | 1.26 | 1.07 | 1.00; fwd+bwd B3 H512 1.56 | 1.17 | 1.02 | '
                                            '0.93 (oneDNN reorders the weights on every call)',
                                    'value': 20}}}
