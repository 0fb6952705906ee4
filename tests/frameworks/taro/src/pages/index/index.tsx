import { View, Text } from '@tarojs/components'
import { useLoad, useUnload } from '@tarojs/taro'
import { useState } from 'react'
import { loadModel, release, setup } from '../../../model-bundler'

const MODEL = 'small'

export default function Index() {
  const [status, setStatus] = useState('loading the model')
  const [progress, setProgress] = useState(0)
  const [result, setResult] = useState<number[]>([])

  useLoad(async () => {
    try {
      const model = await loadModel(MODEL, { onProgress: (f) => setProgress(Math.round(f * 100)) })
      const { tf } = await setup()
      const x = tf.tensor(Array.from({ length: 64 }, (_, i) => i / 63), [1, 64])
      try {
        const y = model.predict(x)   // a LayersModel (format "layers")
        setResult(Array.from(await y.data()))
        y.dispose()
        setStatus('ready')
      } finally {
        x.dispose()
      }
    } catch (err) {
      setStatus('failed: ' + String((err && err.message) || err))
    }
  })

  useUnload(() => {
    release(MODEL)
  })

  return (
    <View className='index'>
      <Text>{status} ({progress}%)</Text>
      <Text>{result.map((v) => v.toFixed(4)).join(' ')}</Text>
    </View>
  )
}
