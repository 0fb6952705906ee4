import { defineConfig } from 'vite'
import uni from '@dcloudio/vite-plugin-uni'
import modelBundler from './wechat-bundle/vite-plugin.mjs'

export default defineConfig({
  plugins: [uni(), modelBundler()],
})
